//! Table-driven tests of `route` over the shipped phase files; no database.

use super::*;
use crate::classify::{
    Classification, CrossJoin, GitlabSchema, StatementKind, TableRef, TableRole, TxnCommand,
};

use StatementKind as K;
use TableRole::{Ddl, Read as R, Written as W};

fn phase(n: usize) -> Phase {
    Phase::from_toml(phase::tests::FILES[n - 1]).unwrap()
}

fn schema_of(table: &str) -> GitlabSchema {
    match table {
        "projects" | "users" => GitlabSchema::Main,
        "ci_builds" | "ci_pipelines" => GitlabSchema::Ci,
        "loose_foreign_keys_deleted_records" => GitlabSchema::Shared,
        "schema_migrations" => GitlabSchema::Internal,
        other => GitlabSchema::Undefined(other.into()),
    }
}

/// A classification as the classifier would build it (2022 cross-join rule).
fn cls(kind: StatementKind, tables: &[(&str, TableRole)]) -> Classification {
    cls_multi(vec![kind], tables)
}

fn cls_multi(statements: Vec<StatementKind>, tables: &[(&str, TableRole)]) -> Classification {
    let tables: Vec<TableRef> = tables
        .iter()
        .map(|(name, role)| TableRef {
            name: (*name).into(),
            role: *role,
            schema: schema_of(name),
        })
        .collect();
    let mut schemas: Vec<GitlabSchema> = tables.iter().map(|t| t.schema.clone()).collect();
    schemas.sort();
    schemas.dedup();
    let allowed = !(schemas.contains(&GitlabSchema::Main) && schemas.contains(&GitlabSchema::Ci));
    let kind = statements
        .iter()
        .copied()
        .max_by_key(StatementKind::strictness)
        .unwrap();
    Classification {
        kind,
        statements,
        tables,
        cross_join: CrossJoin {
            allowed,
            schemas: schemas.clone(),
        },
        schemas,
        error: None,
    }
}

fn begin() -> Classification {
    cls(K::Transaction(TxnCommand::Begin { read_only: false }), &[])
}

fn txn(cmd: TxnCommand) -> Classification {
    cls(K::Transaction(cmd), &[])
}

fn transparent() -> RouteState {
    RouteState::new(ConnectionKind::Transparent, 0.0)
}

/// Routes and applies, as a session would.
fn run(c: &Classification, p: &Phase, s: &mut RouteState) -> Decision {
    let d = route(c, p, s);
    s.after_statement(c, &d);
    d
}

fn kinds(d: &Decision) -> Vec<(ViolationKind, Mode)> {
    d.violations.iter().map(|v| (v.kind, v.mode)).collect()
}

#[test]
fn targets_per_phase_match_phases_md() {
    use Target::*;
    // phase → (projects read, projects write, ci_builds read, ci_builds write)
    let table = [
        (MainReplica, Main, MainReplica, Main),
        (MainReplica, Main, MainReplica, Main),
        (MainReplica, Main, CiReplica, Main),
        (MainReplica, Main, CiReplica, Ci),
        (MainReplica, Main, CiReplica, Ci),
        (MainReplica, Main, CiReplica, Ci),
        (MainReplica, Main, CiReplica, Ci),
    ];
    for (n, want) in (1..=7).zip(table) {
        let p = phase(n);
        let s = transparent();
        let t = |table: &str, kind, role| route(&cls(kind, &[(table, role)]), &p, &s);
        let got = (
            t("projects", K::Read, R).target,
            t("projects", K::Write, W).target,
            t("ci_builds", K::Read, R).target,
            t("ci_builds", K::Write, W).target,
        );
        assert_eq!(got, want, "phase {n}");
        assert_eq!(
            t("ci_builds", K::LockingRead, R).target,
            want.3,
            "FOR UPDATE is a write, phase {n}"
        );
        assert_eq!(t("projects", K::Read, R).reason, Reason::Read);
        assert_eq!(t("ci_builds", K::Write, W).reason, Reason::Write);
        assert!(
            t("ci_builds", K::Write, W).violations.is_empty(),
            "phase {n}"
        );
    }
}

#[test]
fn phase3_read_rollout_share_and_fallback_reason() {
    let p = Phase::from_toml(&phase::tests::FILES[2].replace("percent = 100.0", "percent = 25.0"))
        .unwrap();
    let c = cls(K::Read, &[("ci_builds", R)]);
    let mut on_replica = 0;
    for i in 0..1000 {
        let s = RouteState {
            txn_roll: f64::from(i) * 0.1,
            ..transparent()
        };
        let d = route(&c, &p, &s);
        match d.target {
            Target::CiReplica => on_replica += 1,
            other => assert_eq!(
                (other, d.reason),
                (Target::MainReplica, Reason::RolloutFallback)
            ),
        }
    }
    assert_eq!(on_replica, 250);
}

#[test]
fn client_mode_is_stable_per_connection() {
    let text = phase::tests::FILES[2]
        .replace("percent = 100.0", "percent = 50.0")
        .replace("mode = \"random\"", "mode = \"client\"");
    let p = Phase::from_toml(&text).unwrap();
    let c = cls(K::Read, &[("ci_builds", R)]);
    for (client_roll, want) in [(10.0, Target::CiReplica), (60.0, Target::MainReplica)] {
        for i in 0..100 {
            let s = RouteState {
                txn_roll: f64::from(i),
                ..RouteState::new(ConnectionKind::Transparent, client_roll)
            };
            assert_eq!(route(&c, &p, &s).target, want);
        }
    }
}

#[test]
fn transaction_is_deferred_then_pinned_until_commit() {
    let p = phase(4);
    let mut s = transparent();
    let d = run(&begin(), &p, &mut s);
    assert_eq!(d.reason, Reason::BeginDeferred);
    assert_eq!(s.txn, TxnState::InTransaction { pinned: None });
    // SET LOCAL before any table: no table group yet, pins to the session's group.
    let d = run(&cls(K::Read, &[("ci_builds", R)]), &p, &mut s);
    assert_eq!(
        (d.target, d.reason),
        (Target::Ci, Reason::Write),
        "reads in a transaction use the write target"
    );
    assert_eq!(
        s.pinned(),
        Some(Pinned {
            target: Target::Ci,
            group: Group::Ci
        })
    );
    let d = run(&cls(K::Read, &[("projects", R)]), &p, &mut s);
    assert_eq!(
        (d.target, d.group, d.reason),
        (Target::Ci, Group::Main, Reason::Pinned)
    );
    assert_eq!(kinds(&d), [(ViolationKind::WrongSchema, Mode::Observe)]);
    assert_eq!(
        d.violations[0].message,
        "The query tried to access [\"projects\"] (of gitlab_main) which is outside of allowed schemas \
         ([gitlab_ci, gitlab_internal, gitlab_shared]) for the current connection 'ci'"
    );
    run(&txn(TxnCommand::Commit), &p, &mut s);
    assert_eq!(s.txn, TxnState::Idle);
    assert_eq!(
        route(&cls(K::Read, &[("projects", R)]), &p, &s).target,
        Target::MainReplica
    );
}

#[test]
fn read_only_transaction_goes_to_the_write_target() {
    let p = phase(3);
    let mut s = transparent();
    run(
        &cls(K::Transaction(TxnCommand::Begin { read_only: true }), &[]),
        &p,
        &mut s,
    );
    assert_eq!(
        run(&cls(K::Read, &[("projects", R)]), &p, &mut s).target,
        Target::Main
    );
}

#[test]
fn multi_statement_transaction_in_one_string_ends_idle() {
    let p = phase(4);
    let mut s = transparent();
    let c = cls_multi(
        vec![
            K::Transaction(TxnCommand::Begin { read_only: false }),
            K::Write,
            K::Transaction(TxnCommand::Commit),
        ],
        &[("ci_builds", W)],
    );
    assert_eq!(run(&c, &p, &mut s).target, Target::Ci);
    assert_eq!(s.txn, TxnState::Idle);
    assert_eq!(s.current_group, Group::Ci);
}

#[test]
fn unparsable_fails_closed() {
    let unknown = cls(K::Unknown, &[]);
    for n in 1..=7 {
        let d = route(&unknown, &phase(n), &transparent());
        assert_eq!(
            (d.target, d.reason),
            (Target::Main, Reason::Unparsable),
            "phase {n}"
        );
    }
    // Inside a pinned transaction it cannot move; a ci db_config uses its own primary.
    let mut s = transparent();
    s.txn = TxnState::InTransaction {
        pinned: Some(Pinned {
            target: Target::Ci,
            group: Group::Ci,
        }),
    };
    assert_eq!(route(&unknown, &phase(7), &s).target, Target::Ci);
    let s = RouteState::new(ConnectionKind::DbConfig(Group::Ci), 0.0);
    assert_eq!(route(&unknown, &phase(7), &s).target, Target::Ci);
    assert_eq!(route(&unknown, &phase(3), &s).target, Target::Main);
}

#[test]
fn shared_and_tableless_statements_follow_the_session_group() {
    let p = phase(4);
    let mut s = transparent();
    let lfk = cls(K::Write, &[("loose_foreign_keys_deleted_records", W)]);
    assert_eq!(route(&lfk, &p, &s).target, Target::Main);
    run(&cls(K::Write, &[("ci_builds", W)]), &p, &mut s);
    let d = route(&lfk, &p, &s);
    assert_eq!(
        (d.target, d.group, d.reason),
        (Target::Ci, Group::Ci, Reason::SessionGroup)
    );
    assert_eq!(route(&cls(K::Session, &[]), &p, &s).target, Target::Ci);
}

#[test]
fn undefined_tables_route_as_main() {
    let d = route(
        &cls(K::Read, &[("brand_new_table", R)]),
        &phase(4),
        &transparent(),
    );
    assert_eq!((d.target, d.group), (Target::MainReplica, Group::Main));
    assert_eq!(
        kinds(&d),
        [(ViolationKind::WrongSchema, Mode::Observe)],
        "undefined is allowed nowhere"
    );
}

#[test]
fn db_config_connection_decides_group_and_is_validated() {
    let ci = RouteState::new(ConnectionKind::DbConfig(Group::Ci), 0.0);
    let d = route(&cls(K::Read, &[("projects", R)]), &phase(1), &ci);
    assert_eq!(
        (d.target, d.group, d.reason),
        (Target::MainReplica, Group::Ci, Reason::DbConfig)
    );
    assert_eq!(
        d.violations[0].message,
        "The query tried to access [\"projects\"] (of gitlab_main) which is outside of allowed schemas \
         ([gitlab_ci, gitlab_internal, gitlab_shared]) for the current connection 'ci'"
    );
    // In phases 1–3 main's connection also allows gitlab_ci (ci shares main's database).
    let main = RouteState::new(ConnectionKind::DbConfig(Group::Main), 0.0);
    let c = cls(K::Write, &[("ci_builds", W)]);
    assert!(route(&c, &phase(3), &main).violations.is_empty());
    let d = route(&c, &phase(4), &main);
    assert_eq!(
        (d.target, kinds(&d)),
        (
            Target::Main,
            vec![(ViolationKind::WrongSchema, Mode::Observe)]
        )
    );
    assert!(d.violations[0].message.ends_with(
        "([gitlab_internal, gitlab_main, gitlab_shared]) for the current connection 'main'"
    ));
    assert_eq!(
        route(&cls(K::Write, &[("ci_builds", W)]), &phase(4), &ci).target,
        Target::Ci
    );
}

mod violations;
