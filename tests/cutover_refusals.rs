//! Every preflight refusal of the cutover, through the CLI (`pgdecomp cutover`, exit code 2,
//! outcome "refused") and the admin console (`CUTOVER` → ERROR 55000 "cutover refused: …"),
//! each naming its reason: the phase, CI standby lag, a Patroni member down, an instance not
//! registered or no longer answering, a cutover in progress (which an operator then aborts:
//! the blocked `CUTOVER DRY RUN` gets "cutover aborted: …"), and a recent violation.
//! Replay on the CI standby leader is paused while a refusal is expected, so a cutover that
//! wrongly went ahead would wait in its catch-up and abort instead of promoting the lab.

mod common;
#[path = "common/cutover_load.rs"]
mod cutover_load;
#[path = "common/cutover.rs"]
mod cutover_support;

use std::path::Path;
use std::time::Duration;

use common::cluster::DATABASE;
use common::patroni::PatroniLab;
use common::proxy::Proxy;
use common::scrape::{metric, metrics};
use cutover_support::*;

/// Small enough that 4 MB of WAL are too much lag, large enough that an idle lab never is.
const CUTOVER: &str = "instances = [\"a\", \"b\"]\nmax_lag_bytes = 1048576\nhold_timeout = 5.0\n\
                       catchup_timeout = 20.0";

/// Refused through the CLI (with `config`) and through `proxy`'s admin console.
async fn refused(proxy: &Proxy, config: &Path, dry_run: bool, word: &str) {
    let args: &[&str] = if dry_run { &["--dry-run"] } else { &[] };
    let run = cutover(config, args).await;
    run.expect("refused", 2);
    run.expect_reason(word);
    eprintln!("[cutover] refused ({word}): {}", run.reason());
    let sql = if dry_run {
        "CUTOVER DRY RUN"
    } else {
        "CUTOVER"
    };
    admin_refused(proxy, sql, "cutover refused: ", word).await;
}

/// `sql` on `proxy`'s admin console fails with SQLSTATE 55000, `head` and `word`.
async fn admin_refused(proxy: &Proxy, sql: &str, head: &str, word: &str) {
    let client = admin(proxy).await;
    let (code, message) = db_error(admin_rows(&client, sql).await, sql);
    assert_eq!(code, "55000", "{sql}: {message}");
    assert!(
        message.starts_with(head) && message.to_lowercase().contains(&word.to_lowercase()),
        "{sql}: want {head:?}… naming {word:?}, got {message:?}"
    );
    client
        .simple_query("SHOW VERSION")
        .await
        .expect("the admin session stays usable");
}

/// Pauses replay on the CI standby leader and writes a little WAL on main (far below
/// `max_lag_bytes`): a cutover that is not refused can then not catch up, and aborts.
fn guard(lab: &PatroniLab) {
    lab.pause_replay(&lab.leader("ci"));
    let sql = "create table if not exists guard (t text); insert into guard values ('x')";
    lab.psql(&lab.leader("main"), DATABASE, sql);
}

/// Runs one case; a failure is collected, so one run reports every refusal that is wrong.
async fn case(failures: &mut Vec<String>, what: &str, body: impl std::future::Future<Output = ()>) {
    let result = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(body)).await;
    if let Err(panic) = result {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        failures.push(format!("--- {what}: {message}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_preflight_refusal_names_its_reason_in_the_cli_and_the_admin_console() {
    let _serial = serial().await;
    let lab = tokio::task::spawn_blocking(PatroniLab::start)
        .await
        .expect("lab");
    let etcd = lab.etcd_endpoint();
    let fleet = start_fleet(&lab, &etcd, &prefix("refuse"), &["a", "b"], CUTOVER);
    let (a, b) = (&fleet[0], &fleet[1]);
    let mut failures = Vec::new();
    guard(&lab);
    case(&mut failures, "phase", phase(a)).await;
    case(&mut failures, "Patroni", patroni_member_down(&lab, a)).await;
    case(&mut failures, "instance", instances(a, b)).await;
    case(&mut failures, "in progress", in_progress(a, b)).await;
    case(&mut failures, "lag", lag(&lab, a)).await;
    guard(&lab);
    case(&mut failures, "violation", violation(a, b)).await;
    lab.resume_replay(&lab.leader("ci"));
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_ci_standby(&lab);
    for p in [a, b] {
        let m = metrics(p);
        assert_eq!(metric(&m, "pgdecomp_phase", &[]), 6.0);
        assert!(metric(&m, "pgdecomp_cutover_total", &[("outcome", "refused")]) >= 1.0);
    }
}

/// A cutover needs phase 6; a rehearsal phase 5 or 6.
async fn phase(a: &Proxy) {
    set_phase(a, 5);
    refused(a, &a.config_path(), false, "phase").await;
    set_phase(a, 4);
    refused(a, &a.config_path(), true, "phase").await;
    set_phase(a, 6);
}

/// The CI cluster's replica is down (crashed, and gone from Patroni's /cluster once its member
/// key expired): "Patroni".
async fn patroni_member_down(lab: &PatroniLab, a: &Proxy) {
    let ci_leader = lab.leader("ci");
    let replica = lab
        .members("ci")
        .into_iter()
        .find(|m| *m != ci_leader)
        .expect("ci replica");
    lab.kill_member(&replica);
    let deadline = std::time::Instant::now() + WAIT;
    while lab.roles("ci").iter().any(|(name, _)| *name == replica) {
        assert!(
            std::time::Instant::now() < deadline,
            "{replica} stays in /cluster"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    refused(a, &a.config_path(), false, "Patroni").await;
    let (l, r) = (lab, replica.clone());
    tokio::task::block_in_place(|| l.restart_member(&r));
    let streaming = format!(
        "select count(*) from pg_stat_replication where application_name = '{replica}' \
         and state = 'streaming'"
    );
    common::cluster::wait_until("the restarted ci replica to stream", || {
        lab.try_psql(&ci_leader, "postgres", &streaming).as_deref() == Ok("1")
    });
}

/// An instance in `instances` that never registered, then one that stopped answering.
async fn instances(a: &Proxy, b: &Proxy) {
    let ghost = variant(a, "ghost", &CUTOVER.replace("\"b\"]", "\"b\", \"ghost\"]"));
    let run = cutover(&ghost, &[]).await;
    run.expect("refused", 2);
    run.expect_reason("instance");
    run.expect_reason("ghost");
    b.signal("STOP");
    tokio::time::sleep(Duration::from_secs(u64::from(LEASE_TTL) + 2)).await;
    let config = a.config_path();
    let stopped = refused(a, &config, false, "instance");
    let result = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(stopped));
    let result = result.await;
    b.signal("CONT");
    tokio::task::block_in_place(|| wait_registered(a, "b"));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// While a rehearsal started from `a`'s console waits in its catch-up, another cutover is
/// refused from the CLI and from `b`'s console; `pgdecomp cutover --abort` ends the rehearsal.
async fn in_progress(a: &Proxy, b: &Proxy) {
    let console = admin(a).await;
    let rehearsal = tokio::spawn(async move { admin_rows(&console, "CUTOVER DRY RUN").await });
    let deadline = std::time::Instant::now() + WAIT;
    while show_cutover(a).await.get("step").map(String::as_str) != Some("catchup") {
        assert!(
            std::time::Instant::now() < deadline && !rehearsal.is_finished(),
            "no catchup"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let step = |s: &str| metric(&metrics(a), "pgdecomp_cutover_step", &[("step", s)]);
    assert_eq!(
        step("catchup"),
        1.0,
        "the coordinating instance shows its step"
    );
    let record = status(&a.config_path());
    assert_eq!(record["step"], "catchup", "--status: {record}");
    assert_eq!(record["dry_run"], true, "--status: {record}");
    let run = cutover(&a.config_path(), &[]).await;
    run.expect("refused", 2);
    run.expect_reason("in progress");
    admin_refused(b, "CUTOVER", "cutover refused: ", "in progress").await;

    let abort = cutover(&a.config_path(), &["--abort"]).await;
    assert_eq!(
        abort.code,
        Some(0),
        "--abort: {}\n{}",
        abort.stdout,
        abort.stderr
    );
    let ended = tokio::time::timeout(WAIT, rehearsal)
        .await
        .expect("the rehearsal ends");
    let (code, message) = db_error(ended.expect("console task"), "aborted CUTOVER DRY RUN");
    assert_eq!(code, "55000", "{message}");
    assert!(message.starts_with("cutover aborted: "), "{message}");
    eprintln!("[cutover] operator abort: {message}");
    let m = metrics(a);
    assert!(metric(&m, "pgdecomp_cutover_total", &[("outcome", "aborted")]) >= 1.0);
    assert_eq!(
        metric(&m, "pgdecomp_cutover_step", &[("step", "catchup")]),
        0.0
    );
    let shown = show_cutover(b).await;
    assert_eq!(
        shown.get("outcome").map(String::as_str),
        Some("aborted"),
        "{shown:?}"
    );
}

/// 4 MB of WAL on main the paused CI standby leader has not replayed: "lag".
async fn lag(lab: &PatroniLab, a: &Proxy) {
    let ci_leader = lab.leader("ci");
    let fill = "create table if not exists lag_filler (t text); insert into lag_filler \
                select repeat(md5(i::text), 32) from generate_series(1, 4000) i";
    lab.psql(&lab.leader("main"), DATABASE, fill);
    common::cluster::wait_until("the CI standby to lag", || {
        lab.replay_lag_bytes(&ci_leader) > 1048576
    });
    refused(a, &a.config_path(), false, "lag").await;
    lab.resume_replay(&ci_leader);
    common::cluster::wait_until("the CI standby to catch up", || {
        lab.replay_lag_bytes(&ci_leader) < 1048576
    });
}

/// A cross-join through `b` (counted, phase 6 observes it): "violation", from either side.
async fn violation(a: &Proxy, b: &Proxy) {
    let app = b.connect().await;
    app.simple_query("SELECT p.id FROM projects p JOIN ci_builds c ON c.id = p.id LIMIT 1")
        .await
        .expect("phase 6 observes a cross-join, it does not refuse it");
    tokio::time::sleep(Duration::from_secs(2)).await;
    refused(a, &a.config_path(), false, "violation").await;
    admin_refused(b, "CUTOVER", "cutover refused: ", "violation").await;
}
