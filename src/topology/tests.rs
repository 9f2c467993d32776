//! Unit tests of the topology rules: who is writable, which server a read goes to, lag, and
//! read-your-writes, on hand-built views.

use std::time::{Duration, Instant};

use super::checker::apply_lag;
use super::select::{pick, Need, Pick, Via};
use super::view::{ClusterId, ClusterView, Health, Node, PatroniMember, Probe, Role, View};
use super::{HealthSettings, Lsn, ReadYourWrites};
use crate::route::{CiWriteHost, Target};

fn up(in_recovery: bool, lsn: u64) -> Health {
    Health::Up(Probe {
        in_recovery,
        lsn: Lsn(lsn),
        flushed: Lsn(lsn),
        lag_bytes: 0,
        // Seconds since the last replayed commit, as the check reports it.
        lag_seconds: 5.0,
        sent: Instant::now(),
    })
}

fn node(addr: &str, role: Role, health: Health) -> Node {
    let mut n = Node::new(addr, role);
    n.health = health;
    n
}

/// main: primary p (LSN 1000) + replicas r1 (1000) and r2 (500); ci: standby leader s (1000)
/// + cascading replica c (1000).
fn standby_view() -> View {
    View {
        clusters: [
            ClusterView {
                nodes: vec![
                    node("p", Role::Leader, up(false, 1000)),
                    node("r1", Role::Replica, up(true, 1000)),
                    node("r2", Role::Replica, up(true, 500)),
                ],
                discovered: false,
            },
            ClusterView {
                nodes: vec![
                    node("s", Role::Leader, up(true, 1000)),
                    node("c", Role::Replica, up(true, 1000)),
                ],
                discovered: false,
            },
        ],
    }
}

fn settings(max_bytes: u64, max_secs: f64) -> HealthSettings {
    HealthSettings {
        interval: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(1),
        max_lag_seconds: Duration::from_secs_f64(max_secs),
        max_lag_bytes: max_bytes,
        login: None,
        primary_wait: Duration::from_secs(5),
        read_your_writes: true,
        read_your_writes_timeout: Duration::from_secs(30),
    }
}

fn addr(p: Pick) -> (String, Via) {
    match p {
        Pick::Server { addr, via } => (addr.to_string(), via),
        Pick::NoWriter(why) => panic!("no server: {why}"),
    }
}

const MAIN_HOST: CiWriteHost = CiWriteHost::MainPrimary;

/// A main read before phase 7: the server and why it was chosen.
fn main_read(v: &View, need: Need, rr: usize, skip: Option<&str>) -> (String, Via) {
    addr(pick(v, Target::MainReplica, MAIN_HOST, need, rr, skip))
}

#[test]
fn writes_go_to_the_primary_and_ci_writes_follow_the_phase() {
    let v = standby_view();
    assert_eq!(
        addr(pick(&v, Target::Main, MAIN_HOST, Need::Any, 0, None)).0,
        "p"
    );
    assert_eq!(
        addr(pick(&v, Target::Ci, MAIN_HOST, Need::Any, 0, None)).0,
        "p"
    );
    // Phase 7 before the standby cluster is promoted: nothing takes ci writes.
    match pick(&v, Target::Ci, CiWriteHost::CiPrimary, Need::Any, 0, None) {
        Pick::NoWriter(why) => assert!(why.contains("in recovery"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reads_rotate_over_replicas_and_skip_a_failed_one() {
    let v = standby_view();
    let picks: Vec<String> = (0..4)
        .map(|rr| main_read(&v, Need::Any, rr, None).0)
        .collect();
    assert_eq!(picks, ["r1", "r2", "r1", "r2"]);
    let (a, via) = main_read(&v, Need::Any, 0, Some("r1"));
    assert_eq!((a.as_str(), via), ("r2", Via::Replica));
}

#[test]
fn a_lagging_replica_leaves_the_rotation_and_the_primary_serves_when_none_is_left() {
    let mut v = standby_view();
    apply_lag(&mut v, &settings(100, 0.0));
    let main = v.cluster(ClusterId::Main);
    assert!(main.nodes[2].lagging, "r2 is 500 bytes behind");
    assert!(!main.nodes[1].lagging);
    for rr in 0..3 {
        assert_eq!(main_read(&v, Need::Any, rr, None).0, "r1");
    }
    v.clusters[0].nodes[1].health = Health::Down("refused".into());
    let (a, via) = main_read(&v, Need::Any, 0, None);
    assert_eq!((a.as_str(), via), ("p", Via::NoReplica));
}

#[test]
fn lag_needs_both_thresholds_exceeded() {
    let mut v = standby_view();
    // 500 bytes behind but within the time bound: still up to date (GitLab's OR rule).
    apply_lag(&mut v, &settings(100, 60.0));
    assert!(!v.cluster(ClusterId::Main).nodes[2].lagging);
    // The CI standby cluster is measured against main's primary.
    let mut v = standby_view();
    v.clusters[1].nodes[1].health = up(true, 10);
    apply_lag(&mut v, &settings(100, 0.0));
    let c = &v.cluster(ClusterId::Ci).nodes[1];
    assert_eq!(c.probe().unwrap().lag_bytes, 990);
    assert!(c.lagging);
}

#[test]
fn ci_reads_use_the_standby_leader_then_the_ci_write_host() {
    let mut v = standby_view();
    v.clusters[1].nodes[1].health = Health::Down("gone".into());
    let (a, via) = addr(pick(&v, Target::CiReplica, MAIN_HOST, Need::Any, 0, None));
    assert_eq!((a.as_str(), via), ("s", Via::NoReplica));
    v.clusters[1].nodes[0].health = Health::Down("gone".into());
    assert_eq!(
        addr(pick(&v, Target::CiReplica, MAIN_HOST, Need::Any, 0, None)).0,
        "p"
    );
}

#[test]
fn patroni_fence_needs_a_running_leader_out_of_recovery() {
    let member = |role: &str, state: &str| PatroniMember {
        name: "m".into(),
        role: role.into(),
        state: state.into(),
    };
    let mut n = node("p", Role::Leader, up(false, 1));
    n.patroni = Some(member("master", "running"));
    assert!(n.writable());
    n.patroni = Some(member("master", "stopping"));
    assert!(!n.writable(), "a stopping leader still says master");
    n.patroni = Some(member("leader", "running"));
    n.health = up(true, 1);
    assert!(!n.writable(), "promoted by Patroni but still in recovery");
    n.health = Health::Unknown;
    assert!(!n.writable(), "with Patroni, unchecked is not enough");
    let mut s = node("p", Role::Leader, Health::Unknown);
    assert!(s.writable(), "a static primary is trusted until checked");
    s.health = Health::Down("refused".into());
    assert!(!s.writable());
}

#[test]
fn read_your_writes_goes_to_the_primary_until_the_position_is_known() {
    let v0 = standby_view();
    let mut ryw = ReadYourWrites::new(true, Duration::from_secs(30));
    assert_eq!(ryw.need(&v0, ClusterId::Main, Instant::now()), Need::Any);
    std::thread::sleep(Duration::from_millis(2));
    let wrote = Instant::now();
    ryw.wrote(ClusterId::Main, wrote);
    // The view's primary sample predates the commit: only the primary surely has it.
    assert_eq!(
        ryw.need(&v0, ClusterId::Main, Instant::now()),
        Need::Primary
    );
    let (a, via) = main_read(&v0, Need::Primary, 0, None);
    assert_eq!((a.as_str(), via), ("p", Via::ReadYourWrites));
    // A later sample bounds the commit's position; r1 has replayed it, r2 has not.
    let v1 = standby_view();
    let need = ryw.need(&v1, ClusterId::Main, Instant::now());
    assert_eq!(need, Need::AtLeast(Lsn(1000)));
    for rr in 0..3 {
        assert_eq!(main_read(&v1, need, rr, None).0, "r1");
    }
    // CI standby servers replay main's WAL, so the same position applies to ci reads.
    assert_eq!(
        ryw.need(&v1, ClusterId::Ci, Instant::now()),
        Need::AtLeast(Lsn(1000))
    );
    // The bound expires.
    let later = Instant::now() + Duration::from_secs(31);
    assert_eq!(ryw.need(&v1, ClusterId::Main, later), Need::Any);
}

#[test]
fn read_your_writes_can_be_off_or_given_a_position() {
    let v = standby_view();
    let mut off = ReadYourWrites::new(false, Duration::from_secs(30));
    off.wrote(ClusterId::Main, Instant::now());
    assert_eq!(off.need(&v, ClusterId::Main, Instant::now()), Need::Any);
    let mut given = ReadYourWrites::new(true, Duration::from_secs(30));
    given.require(Lsn(900), Instant::now());
    assert_eq!(
        given.need(&v, ClusterId::Main, Instant::now()),
        Need::AtLeast(Lsn(900))
    );
    assert_eq!(given.required(), Some(Lsn(900)));
    given.clear();
    assert_eq!(given.need(&v, ClusterId::Main, Instant::now()), Need::Any);
}

#[test]
fn a_promoted_ci_cluster_is_its_own_wal_source() {
    let mut v = standby_view();
    assert_eq!(v.wal_source(ClusterId::Ci), ClusterId::Main);
    v.clusters[1].nodes[0].health = up(false, 7);
    assert_eq!(v.wal_source(ClusterId::Ci), ClusterId::Ci);
    let (a, via) = addr(pick(
        &v,
        Target::Ci,
        CiWriteHost::CiPrimary,
        Need::Any,
        0,
        None,
    ));
    assert_eq!((a.as_str(), via), ("s", Via::Primary));
}

#[test]
fn an_idle_caught_up_replica_has_no_lag_though_the_insert_position_runs_ahead() {
    let mut v = standby_view();
    // Idle primary: insert position a page header past what was flushed and shipped.
    if let Health::Up(p) = &mut v.clusters[0].nodes[0].health {
        p.lsn = Lsn(1040);
        p.flushed = Lsn(1000);
    }
    apply_lag(&mut v, &settings(0, 0.0));
    let r1 = &v.cluster(ClusterId::Main).nodes[1];
    assert_eq!(r1.probe().unwrap().lag_bytes, 0);
    assert_eq!(r1.probe().unwrap().lag_seconds, 0.0);
    assert!(!r1.lagging);
}

#[test]
fn a_check_cancelled_by_its_statement_timeout_counts_as_a_timeout() {
    use crate::server::ServerError;
    let query = |code: &str| ServerError::Query {
        addr: "db:5432".into(),
        code: code.into(),
        message: "m".into(),
    };
    // The grace `settle` gives one timeout applies to both.
    let timed_out = super::checker::failed(&query("57014"));
    assert!(matches!(&timed_out, Health::Down(e) if e == "check timed out"));
    let other = super::checker::failed(&query("XX000"));
    assert!(matches!(&other, Health::Down(e) if e.contains("XX000")));
    let login = ServerError::Rejected {
        addr: "db:5432".into(),
        code: "28P01".into(),
        message: "m".into(),
    };
    assert!(matches!(super::checker::failed(&login), Health::Unknown));
}
