//! Cost of placing a routed target on a server (`topology::pick`) and of read-your-writes
//! bookkeeping, on every checkout: both must stay far below a network round trip.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pgdecomp::route::{CiWriteHost, Target};
use pgdecomp::topology::view::{ClusterView, Health, Node, Probe, Role, View};
use pgdecomp::topology::{pick, ClusterId, Lsn, Need, ReadYourWrites};

fn node(addr: &str, role: Role, in_recovery: bool, lsn: u64) -> Node {
    let mut n = Node::new(addr, role);
    n.health = Health::Up(Probe {
        in_recovery,
        lsn: Lsn(lsn),
        flushed: Lsn(lsn),
        lag_bytes: 0,
        lag_seconds: 0.0,
        sent: Instant::now(),
    });
    n
}

/// main: primary + 3 replicas; ci: standby leader + 2 replicas.
fn view() -> View {
    View {
        clusters: [
            ClusterView {
                nodes: vec![
                    node("10.0.0.1:5432", Role::Leader, false, 1000),
                    node("10.0.0.2:5432", Role::Replica, true, 1000),
                    node("10.0.0.3:5432", Role::Replica, true, 900),
                    node("10.0.0.4:5432", Role::Replica, true, 1000),
                ],
                discovered: true,
            },
            ClusterView {
                nodes: vec![
                    node("10.0.1.1:5432", Role::Leader, true, 1000),
                    node("10.0.1.2:5432", Role::Replica, true, 1000),
                    node("10.0.1.3:5432", Role::Replica, true, 1000),
                ],
                discovered: true,
            },
        ],
    }
}

fn bench(c: &mut Criterion) {
    let v = view();
    let host = CiWriteHost::MainPrimary;
    c.bench_function("topology/pick_replica", |b| {
        let mut rr = 0;
        b.iter(|| {
            rr += 1;
            pick(
                black_box(&v),
                Target::MainReplica,
                host,
                Need::Any,
                rr,
                None,
            )
        })
    });
    c.bench_function("topology/pick_replica_caught_up_to_lsn", |b| {
        let mut rr = 0;
        b.iter(|| {
            rr += 1;
            let need = Need::AtLeast(Lsn(950));
            pick(black_box(&v), Target::MainReplica, host, need, rr, None)
        })
    });
    c.bench_function("topology/pick_primary", |b| {
        b.iter(|| pick(black_box(&v), Target::Main, host, Need::Any, 0, None))
    });
    c.bench_function("topology/read_your_writes_need", |b| {
        let mut ryw = ReadYourWrites::new(true, Duration::from_secs(30));
        ryw.require(Lsn(950), Instant::now());
        b.iter(|| ryw.need(black_box(&v), ClusterId::Ci, Instant::now()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
