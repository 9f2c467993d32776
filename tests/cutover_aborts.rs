//! A cutover that cannot finish before the promotion aborts and leaves everything as it was:
//! a catch-up past its timeout, an instance that never confirms the hold (SIGSTOPped), etcd
//! lost during the catch-up (instances keep ci writes held until etcd answers, then release
//! them on phase 6), the CI standby leader lost during the catch-up, and a ci transaction left
//! open past the hold's bound (one that commits during the hold precedes the recorded LSN).
//! After each abort (exit code 1, outcome "aborted", a reason): the fleet runs phase 6, the CI
//! cluster is still a standby, every held ci write completed on the main primary with no
//! client error, and every acknowledged write is there.

mod common;
#[path = "common/cutover_load.rs"]
mod cutover_load;
#[path = "common/cutover.rs"]
mod cutover_support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::patroni::PatroniLab;
use common::proxy::Proxy;
use common::scrape::{metric, metrics};
use cutover_load::{Group, Load, Outcome};
use cutover_support::*;

const WRITERS_PER_INSTANCE: usize = 5;

/// One lab for the aborts that leave it as they found it (the watchdog stops it at exit).
fn shared_lab() -> &'static PatroniLab {
    static LAB: OnceLock<PatroniLab> = OnceLock::new();
    let lab = tokio::task::block_in_place(|| LAB.get_or_init(PatroniLab::start));
    lab.resume_replay(&lab.leader("ci"));
    assert_ci_standby(lab);
    lab
}

fn held(proxy: &Proxy) -> f64 {
    metric(&metrics(proxy), "pgdecomp_cutover_held_transactions", &[])
}

/// Everything is as before the cutover, and nothing acknowledged was lost.
fn assert_nothing_changed(lab: &PatroniLab, fleet: &[&Proxy], seen: &Outcome) {
    let main = lab.leader("main");
    let main_port = lab.pg_port(&main);
    seen.assert_no_errors();
    seen.assert_all_on_port(Group::Main, main_port);
    seen.assert_all_on_port(Group::Ci, main_port);
    seen.assert_rows_on(lab, &main, Group::Main);
    seen.assert_rows_on(lab, &main, Group::Ci);
    assert_ci_standby(lab);
    assert!(!ci_writable(lab), "the CI cluster was not promoted");
    for p in fleet {
        assert_eq!(phase_of(p), 6.0, "the fleet still runs phase 6");
        assert_eq!(held(p), 0.0, "nothing is held any more");
    }
}

fn steps(run: &Run) -> Vec<String> {
    let steps = run.report["steps"].as_array().cloned().unwrap_or_default();
    steps
        .iter()
        .map(|s| s["step"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catchup_past_its_timeout_aborts() {
    let _serial = serial().await;
    let lab = shared_lab();
    let cutover_toml = "catchup_timeout = 3.0\ninstances = [\"a\", \"b\"]";
    let fleet = start_fleet(
        lab,
        &lab.etcd_endpoint(),
        &prefix("timeout"),
        &["a", "b"],
        cutover_toml,
    );
    let fleet: Vec<&Proxy> = fleet.iter().collect();
    let load = Load::start(&fleet, WRITERS_PER_INSTANCE, "timeout");
    load.more(100).await;
    let ci_leader = lab.leader("ci");
    lab.pause_replay(&ci_leader);
    let run = cutover(&fleet[0].config_path(), &[]).await;
    lab.resume_replay(&ci_leader);
    load.more(100).await;
    let seen = load.stop().await;
    eprintln!("[cutover] report: {}\n{}", run.report, run.stderr);
    run.expect("aborted", 1);
    run.expect_reason("catchup");
    assert!(
        !steps(&run).iter().any(|s| s == "promote"),
        "{}",
        run.report
    );
    seen.print_ci_latency("catch-up timeout", run.started, run.ended);
    assert_nothing_changed(lab, &fleet, &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_that_never_confirms_the_hold_aborts_it() {
    let _serial = serial().await;
    let lab = shared_lab();
    let (etcd, prefix) = (lab.etcd_endpoint(), prefix("frozen"));
    // A long lease: b stays registered while frozen, so only the hold can notice it.
    let cutover_toml = "hold_timeout = 2.0\ninstances = [\"a\", \"b\"]";
    let fleet: Vec<Proxy> = ["a", "b"]
        .iter()
        .map(|n| {
            start_instance(&instance_config_ttl(
                lab,
                &etcd,
                &prefix,
                n,
                30,
                cutover_toml,
            ))
        })
        .collect();
    set_phase(&fleet[0], 6);
    let fleet: Vec<&Proxy> = fleet.iter().collect();
    let load = Load::start(&fleet, WRITERS_PER_INSTANCE, "frozen");
    load.more(100).await;
    fleet[1].signal("STOP");
    let run = cutover(&fleet[0].config_path(), &[]).await;
    fleet[1].signal("CONT");
    load.more(100).await;
    let seen = load.stop().await;
    eprintln!("[cutover] report: {}\n{}", run.report, run.stderr);
    run.expect("aborted", 1);
    assert!(!run.reason().is_empty(), "an abort gives its reason");
    let steps = steps(&run);
    assert!(
        !steps.iter().any(|s| s == "read_lsn" || s == "catchup"),
        "ended in the hold: {steps:?}"
    );
    assert!(
        run.ended - run.started < Duration::from_secs(15),
        "bounded by hold_timeout"
    );
    seen.print_ci_latency("frozen instance", run.started, run.ended);
    assert_nothing_changed(lab, &fleet, &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_lost_during_the_catchup_aborts_and_the_held_writes_wait_for_it() {
    let _serial = serial().await;
    let lab = shared_lab();
    let link = Link::to(&lab.etcd_endpoint());
    let cutover_toml = "catchup_timeout = 60.0\ninstances = [\"a\", \"b\"]";
    let fleet = start_fleet(
        lab,
        &link.endpoint(),
        &prefix("etcd"),
        &["a", "b"],
        cutover_toml,
    );
    let fleet: Vec<&Proxy> = fleet.iter().collect();
    let load = Load::start(&fleet, WRITERS_PER_INSTANCE, "etcd");
    load.more(100).await;
    let ci_leader = lab.leader("ci");
    lab.pause_replay(&ci_leader);
    let mut pending = spawn_cutover(&fleet[0].config_path(), &[]);
    wait_step(fleet[0], &mut pending, "catchup").await;
    link.cut();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending.is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let aborted_while_cut = !pending.is_running();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held_while_cut: Vec<f64> = fleet.iter().map(|p| held(p)).collect();
    link.restore();
    let deadline = Instant::now() + WAIT;
    while fleet.iter().any(|p| held(p) > 0.0) {
        assert!(
            Instant::now() < deadline,
            "held writes never released after etcd came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.resume_replay(&ci_leader);
    let run = tokio::task::spawn_blocking(move || pending.finish(RUN_BOUND))
        .await
        .expect("run");
    load.more(100).await;
    let seen = load.stop().await;
    eprintln!("[cutover] report: {}\n{}", run.report, run.stderr);
    run.expect("aborted", 1);
    assert!(
        aborted_while_cut,
        "the coordinator aborts without etcd instead of waiting for it"
    );
    assert!(
        held_while_cut.iter().all(|h| *h >= 1.0),
        "instances cut off from etcd keep ci writes held: {held_while_cut:?}"
    );
    assert_nothing_changed(lab, &fleet, &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ci_standby_leader_lost_during_the_catchup_aborts_the_cutover() {
    let _serial = serial().await;
    let lab = tokio::task::spawn_blocking(PatroniLab::start)
        .await
        .expect("lab");
    let cutover_toml = "catchup_timeout = 60.0\ninstances = [\"a\", \"b\"]";
    let fleet = start_fleet(
        &lab,
        &lab.etcd_endpoint(),
        &prefix("leader"),
        &["a", "b"],
        cutover_toml,
    );
    let fleet: Vec<&Proxy> = fleet.iter().collect();
    let load = Load::start(&fleet, WRITERS_PER_INSTANCE, "leader");
    load.more(100).await;
    let ci_leader = lab.leader("ci");
    lab.pause_replay(&ci_leader);
    let mut pending = spawn_cutover(&fleet[0].config_path(), &[]);
    wait_step(fleet[0], &mut pending, "catchup").await;
    tokio::task::block_in_place(|| lab.kill_member(&ci_leader));
    let killed = Instant::now();
    let run = tokio::task::spawn_blocking(move || pending.finish(RUN_BOUND))
        .await
        .expect("run");
    eprintln!(
        "[cutover] aborted {:?} after the kill; report: {}\n{}",
        run.ended - killed,
        run.report,
        run.stderr
    );
    load.more(100).await;
    let seen = load.stop().await;
    run.expect("aborted", 1);
    assert!(
        run.ended - killed < Duration::from_secs(30),
        "aborted on the lost leader, not by catchup_timeout"
    );
    common::cluster::wait_until("a new ci standby leader", || {
        lab.roles("ci")
            .iter()
            .any(|(_, role)| role == "standby_leader")
    });
    assert_nothing_changed(&lab, &fleet, &seen);
}

/// A ci transaction open on `proxy`, after its insert: the client and the insert's WAL position.
async fn open_ci_transaction(proxy: &Proxy, name: &str) -> (tokio_postgres::Client, u64) {
    let client = proxy.connect().await;
    client.batch_execute("BEGIN").await.expect("BEGIN");
    let sql =
        "insert into ci_builds (name) values ($1) returning pg_current_wal_insert_lsn()::text";
    let row = client
        .query_one(sql, &[&name])
        .await
        .expect("insert in the transaction");
    (client, lsn(row.get::<_, &str>(0)))
}

/// The hold lets running ci transactions finish: one that commits during the hold precedes the
/// recorded LSN; one left open past `hold_timeout` aborts the hold, then commits on main.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_ci_transactions_finish_before_the_lsn_or_abort_the_hold() {
    let _serial = serial().await;
    let lab = shared_lab();
    let cutover_toml = "hold_timeout = 3.0\ninstances = [\"a\", \"b\"]";
    let fleet = start_fleet(
        lab,
        &lab.etcd_endpoint(),
        &prefix("running"),
        &["a", "b"],
        cutover_toml,
    );
    let a = &fleet[0];
    let (t1, t1_lsn) = open_ci_transaction(a, "running-t1").await;
    let mut pending = spawn_cutover(&a.config_path(), &["--dry-run"]);
    wait_step(a, &mut pending, "hold").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        pending.is_running(),
        "the hold waits for the running transaction"
    );
    t1.batch_execute("COMMIT")
        .await
        .expect("COMMIT during the hold");
    let run = tokio::task::spawn_blocking(move || pending.finish(RUN_BOUND))
        .await
        .expect("run");
    eprintln!("[cutover] report: {}\n{}", run.report, run.stderr);
    run.expect("rehearsed", 0);
    let cut = lsn(run.report["lsn"].as_str().expect("lsn"));
    assert!(t1_lsn < cut, "the commit during the hold precedes {cut:#x}");
    let hold = run.report["steps"]
        .as_array()
        .and_then(|s| s.get(1))
        .cloned();
    let waited = hold
        .as_ref()
        .and_then(|h| h["seconds"].as_f64())
        .unwrap_or(0.0);
    assert!(
        waited >= 1.0,
        "the hold step waited for the commit: {hold:?}"
    );

    left_open_past_the_hold_timeout(lab, a).await;
}

/// A ci transaction left open past `hold_timeout` aborts the hold; it then commits on main.
async fn left_open_past_the_hold_timeout(lab: &PatroniLab, a: &Proxy) {
    let (t2, _) = open_ci_transaction(a, "running-t2").await;
    let run = cutover(&a.config_path(), &["--dry-run"]).await;
    eprintln!("[cutover] report: {}\n{}", run.report, run.stderr);
    run.expect("aborted", 1);
    run.expect_reason("hold");
    t2.batch_execute("COMMIT")
        .await
        .expect("the open transaction commits after the abort");
    let main = lab.leader("main");
    let sql = "select count(*) from ci_builds where name in ('running-t1', 'running-t2')";
    assert_eq!(
        lab.psql(&main, common::cluster::DATABASE, sql),
        "2",
        "both on main"
    );
    assert_ci_standby(lab);
    assert_eq!(phase_of(a), 6.0);
}
