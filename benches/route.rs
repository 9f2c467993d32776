//! Benchmark of pipeline step 3 (client → framing → classify → **route** → pool → server):
//! `route()` over a grid of classification × phase × transaction state.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pgdecomp::classify::{
    Classification, CrossJoin, GitlabSchema, StatementKind, TableRef, TableRole, TxnCommand,
};
use pgdecomp::route::{
    route, route_shadow, ConnectionKind, Group, Phase, Pinned, RouteState, Target, TxnState,
};

fn cls(kind: StatementKind, tables: &[(&str, GitlabSchema, TableRole)]) -> Classification {
    let tables: Vec<TableRef> = tables
        .iter()
        .map(|(n, s, r)| TableRef {
            name: (*n).into(),
            role: *r,
            schema: s.clone(),
        })
        .collect();
    let mut schemas: Vec<GitlabSchema> = tables.iter().map(|t| t.schema.clone()).collect();
    schemas.sort();
    schemas.dedup();
    let allowed = !(schemas.contains(&GitlabSchema::Main) && schemas.contains(&GitlabSchema::Ci));
    Classification {
        kind,
        statements: vec![kind],
        tables,
        cross_join: CrossJoin {
            allowed,
            schemas: schemas.clone(),
        },
        schemas,
        error: None,
    }
}

fn classifications() -> Vec<Classification> {
    use GitlabSchema::{Ci, Main, Shared};
    use StatementKind as K;
    use TableRole::{Read, Written};
    vec![
        cls(K::Read, &[("projects", Main, Read)]),
        cls(
            K::Read,
            &[("ci_builds", Ci, Read), ("ci_pipelines", Ci, Read)],
        ),
        cls(K::Write, &[("ci_builds", Ci, Written)]),
        cls(K::LockingRead, &[("projects", Main, Read)]),
        cls(
            K::Read,
            &[("projects", Main, Read), ("ci_builds", Ci, Read)],
        ),
        cls(
            K::Write,
            &[("loose_foreign_keys_deleted_records", Shared, Written)],
        ),
        cls(K::Transaction(TxnCommand::Begin { read_only: false }), &[]),
        cls(K::Unknown, &[]),
    ]
}

fn phases() -> Vec<Phase> {
    let load = |t: &str| Phase::from_toml(t).expect("shipped phase file");
    vec![
        load(include_str!("../phases/phase-1.toml")),
        load(include_str!("../phases/phase-3.toml")),
        load(include_str!("../phases/phase-4.toml")),
        load(include_str!("../phases/phase-7.toml")),
    ]
}

fn states() -> Vec<RouteState> {
    let idle = RouteState {
        txn_roll: 42.0,
        ..RouteState::new(ConnectionKind::Transparent, 17.0)
    };
    let open = RouteState {
        txn: TxnState::InTransaction { pinned: None },
        ..idle.clone()
    };
    let pinned = Pinned {
        target: Target::Ci,
        group: Group::Ci,
    };
    let pinned_ci = RouteState {
        txn: TxnState::InTransaction {
            pinned: Some(pinned),
        },
        ..idle.clone()
    };
    let db_config = RouteState::new(ConnectionKind::DbConfig(Group::Ci), 17.0);
    vec![idle, open, pinned_ci, db_config]
}

fn bench(c: &mut Criterion) {
    let (cs, ps, ss) = (classifications(), phases(), states());
    let calls = cs.len() * ps.len() * ss.len();
    c.bench_function(&format!("route/grid_{calls}_calls"), |b| {
        b.iter(|| {
            for cl in &cs {
                for p in &ps {
                    for s in &ss {
                        black_box(route(black_box(cl), black_box(p), black_box(s)));
                    }
                }
            }
        })
    });
    let (read, idle) = (&cs[0], &ss[0]);
    c.bench_function("route/read_idle_phase4", |b| {
        b.iter(|| route(black_box(read), black_box(&ps[2]), black_box(idle)))
    });
    let p4_shadow = ps[2]
        .clone()
        .with_shadow(ps[3].clone())
        .expect("phase 7 has no shadow");
    c.bench_function("route/read_idle_phase4_plus_shadow", |b| {
        b.iter(|| {
            let d = route(black_box(read), black_box(&p4_shadow), black_box(idle));
            (
                d,
                route_shadow(black_box(read), black_box(&p4_shadow), black_box(idle)),
            )
        })
    });
    c.bench_function("route/pinned_violation_phase7", |b| {
        b.iter(|| route(black_box(&cs[0]), black_box(&ps[3]), black_box(&ss[2])))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
