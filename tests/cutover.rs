//! The phase-7 cutover (`pgdecomp cutover`) on a real Patroni lab under 20 writing clients
//! loses and misplaces nothing: every acknowledged ci write is on the CI primary afterwards,
//! none was taken by the main primary at or past the recorded LSN, no client saw an error; a
//! rehearsal (`--dry-run`) changes nothing; an instance killed and restarted mid-cutover comes
//! back in the fleet's phase and hold, and one cut off from etcd keeps its ci writes held until
//! it learns the outcome, then sends them to the CI primary.
//! Where a write landed is proven by the server's own `inet_server_port()`.

mod common;
#[path = "common/cutover_load.rs"]
mod cutover_load;
#[path = "common/cutover.rs"]
mod cutover_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::patroni::PatroniLab;
use common::proxy::Proxy;
use common::scrape::{metric, metrics};
use cutover_load::{Group, Load};
use cutover_support::*;

const WRITERS_PER_INSTANCE: usize = 10;
const CUTOVER: &str = "hold_timeout = 5.0\ncatchup_timeout = 30.0\npromote_timeout = 60.0\n\
                       switch_timeout = 30.0\ninstances = [\"a\", \"b\"]";
const ALL_STEPS: [&str; 8] = [
    "preflight",
    "hold",
    "read_lsn",
    "catchup",
    "promote",
    "fence",
    "switch",
    "release",
];
const REHEARSAL_STEPS: [&str; 5] = ["preflight", "hold", "read_lsn", "catchup", "release"];

async fn start_lab() -> Arc<PatroniLab> {
    Arc::new(
        tokio::task::spawn_blocking(PatroniLab::start)
            .await
            .expect("lab start"),
    )
}

fn steps(run: &Run) -> Vec<String> {
    run.report["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["step"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Sum of `name` over the instances' metrics.
fn fleet_metric(fleet: &[&Proxy], name: &str) -> f64 {
    fleet.iter().map(|p| metric(&metrics(p), name, &[])).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rehearsal_then_the_cutover_under_load_lose_no_acknowledged_write() {
    let _serial = serial().await;
    let lab = start_lab().await;
    let fleet = start_fleet(
        &lab,
        &lab.etcd_endpoint(),
        &prefix("load"),
        &["a", "b"],
        CUTOVER,
    );
    let fleet: Vec<&Proxy> = fleet.iter().collect();
    let main_port = lab.pg_port(&lab.leader("main"));
    rehearse_under_load(&lab, &fleet, main_port).await;
    let report = cut_over_under_load(&lab, &fleet, main_port).await;
    after_the_cutover(&fleet, &report).await;
}

/// The record says completed everywhere, and a second cutover is refused.
async fn after_the_cutover(fleet: &[&Proxy], report: &serde_json::Value) {
    let record = status(&fleet[0].config_path());
    assert_eq!(record["outcome"], "completed", "--status: {record}");
    assert_eq!(record["epoch"], report["epoch"], "--status: {record}");
    let shown = show_cutover(fleet[1]).await;
    assert_eq!(
        shown.get("outcome").map(String::as_str),
        Some("completed"),
        "{shown:?}"
    );
    assert_eq!(
        shown.get("lsn").map(String::as_str),
        report["lsn"].as_str(),
        "{shown:?}"
    );
    let again = cutover(&fleet[0].config_path(), &[]).await;
    again.expect("refused", 2);
    eprintln!("[cutover] a second cutover is refused: {}", again.reason());
}

/// Test 2: a dry run under the same load holds, measures and releases; nothing moves.
async fn rehearse_under_load(lab: &PatroniLab, fleet: &[&Proxy], main_port: u16) {
    let load = Load::start(fleet, WRITERS_PER_INSTANCE, "dry");
    load.more(200).await;
    let run = cutover(&fleet[0].config_path(), &["--dry-run"]).await;
    load.more(100).await;
    console_rehearsal(fleet[1]).await;
    load.more(100).await;
    let seen = load.stop().await;
    eprintln!("[cutover] rehearsal report: {}\n{}", run.report, run.stderr);
    run.expect("rehearsed", 0);
    assert_eq!(run.report["dry_run"], true, "{}", run.report);
    assert_eq!(steps(&run), REHEARSAL_STEPS, "{}", run.report);
    for key in ["hold_seconds", "catchup_seconds"] {
        let v = run.report[key].as_f64();
        assert!(v.is_some_and(|v| v >= 0.0), "{key} in {}", run.report);
    }
    assert!(run.report["lsn"].as_str().is_some(), "{}", run.report);
    seen.print_ci_latency("rehearsal", run.started, run.ended);
    seen.assert_no_errors();
    seen.assert_all_on_port(Group::Main, main_port);
    seen.assert_all_on_port(Group::Ci, main_port);
    assert_ci_standby(lab);
    assert!(!ci_writable(lab), "a rehearsal does not promote");
    for p in fleet {
        assert_eq!(phase_of(p), 6.0, "a rehearsal keeps phase 6");
    }
}

/// `CUTOVER DRY RUN` on the admin console answers one row per step (step, seconds, detail);
/// the instance that ran it counts it and shows the catch-up time.
async fn console_rehearsal(proxy: &Proxy) {
    let console = admin(proxy).await;
    let rows = admin_rows(&console, "CUTOVER DRY RUN")
        .await
        .expect("CUTOVER DRY RUN");
    let column = |name: &str| -> Vec<String> {
        rows.iter()
            .map(|r| {
                r.iter()
                    .find(|(c, _)| c == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
            .collect()
    };
    // One row per step, then a summary row naming the outcome.
    let steps = column("step");
    assert_eq!(steps[..steps.len().min(5)], REHEARSAL_STEPS, "{rows:?}");
    assert!(
        steps.len() == 6 && steps[5].starts_with("rehearsed"),
        "{rows:?}"
    );
    assert!(
        column("seconds").iter().all(|s| s.parse::<f64>().is_ok()),
        "{rows:?}"
    );
    let m = metrics(proxy);
    assert_eq!(
        metric(&m, "pgdecomp_cutover_total", &[("outcome", "rehearsed")]),
        1.0
    );
    let catchup = metric(&m, "pgdecomp_cutover_catchup_seconds", &[]);
    eprintln!("[cutover] console rehearsal: catch-up {catchup} s; {rows:?}");
    let shown = show_cutover(proxy).await;
    for column in [
        "epoch",
        "dry_run",
        "step",
        "outcome",
        "reason",
        "lsn",
        "hold_seconds",
        "catchup_seconds",
    ] {
        assert!(
            shown.contains_key(column),
            "SHOW CUTOVER has {column}: {shown:?}"
        );
    }
    assert_eq!(shown["outcome"], "rehearsed", "{shown:?}");
}

/// Test 1: the cutover under 20 writers: completed, nothing lost, nothing on the wrong side.
async fn cut_over_under_load(
    lab: &PatroniLab,
    fleet: &[&Proxy],
    main_port: u16,
) -> serde_json::Value {
    let ci_leader = lab.leader("ci");
    let ci_port = lab.pg_port(&ci_leader);
    let held_before = fleet_metric(fleet, "pgdecomp_cutover_hold_seconds_count");
    let load = Load::start(fleet, WRITERS_PER_INSTANCE, "cut");
    load.more(200).await;
    let run = cutover(&fleet[0].config_path(), &[]).await;
    load.more(200).await;
    let seen = load.stop().await;
    eprintln!("[cutover] report: {}\n{}", run.report, run.stderr);
    run.expect("completed", 0);
    assert_eq!(steps(&run), ALL_STEPS, "{}", run.report);
    let cut = lsn(run.report["lsn"]
        .as_str()
        .expect("the report names the LSN"));
    let max = seen.print_ci_latency("cutover", run.started, run.ended);
    seen.assert_no_errors();
    seen.assert_all_on_port(Group::Main, main_port);
    let late: Vec<_> = seen
        .of(Group::Ci)
        .filter(|a| a.port == main_port && a.lsn >= cut)
        .map(|a| (&a.name, a.lsn))
        .collect();
    assert!(
        late.is_empty(),
        "ci writes taken by main at or past {cut:#x}: {late:?}"
    );
    let ci_acks: Vec<u16> = seen.of(Group::Ci).map(|a| a.port).collect();
    assert!(ci_acks.iter().all(|p| *p == main_port || *p == ci_port));
    assert!(
        ci_acks.contains(&ci_port),
        "ci writes after the cutover go to the CI primary"
    );
    seen.assert_rows_on(lab, &lab.leader("main"), Group::Main);
    seen.assert_rows_on(lab, &ci_leader, Group::Ci);
    assert!(
        ci_writable(lab) && lab.leader("ci") == ci_leader,
        "ci-1 is the CI primary"
    );
    for p in fleet {
        assert_eq!(phase_of(p), 7.0, "the fleet runs phase 7");
    }
    let held = fleet_metric(fleet, "pgdecomp_cutover_hold_seconds_count") - held_before;
    eprintln!("[cutover] {held} ci transactions were held by the instances");
    assert!(held > 0.0, "some ci write was held (20 writers, a hold)");
    assert!(
        max < Duration::from_secs(60),
        "sanity: a held ci write waited {max:?}"
    );
    run.report
}

/// A ci write through `proxy` on a fresh connection: the port of the server that took it.
fn ci_write(proxy: &Proxy, name: &str) -> Write {
    let (config, name) = (proxy.app_config(), name.to_string());
    tokio::spawn(async move {
        let client = common::proxy::connect(&config)
            .await
            .map_err(|e| e.to_string())?;
        let sql = "insert into ci_builds (name) values ($1) returning inet_server_port()";
        let row = client
            .query_one(sql, &[&name])
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(row.get::<_, i32>(0) as u16)
    })
}

async fn landed(write: Write, what: &str) -> u16 {
    tokio::time::timeout(WAIT, write)
        .await
        .unwrap_or_else(|_| panic!("{what}: still held after {WAIT:?}"))
        .expect("write task")
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn wait_metric(proxy: &Proxy, what: &str, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok(&metrics(proxy)) {
        assert!(Instant::now() < deadline, "{what}\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn held(text: &str) -> bool {
    metric(text, "pgdecomp_cutover_held_transactions", &[]) >= 1.0
}

fn phase_is(n: f64) -> impl Fn(&str) -> bool {
    move |text| metric(text, "pgdecomp_phase", &[]) == n
}

type Write = tokio::task::JoinHandle<Result<u16, String>>;

/// SIGKILLs `c` and starts it again with the same config: mid-cutover it comes back in the
/// fleet's phase 6 and holds ci writes (it takes both from etcd).
async fn kill_and_restart(mut c: Proxy, config: &str) -> (Proxy, Write) {
    c.signal("KILL");
    assert!(c.wait_exit(WAIT).is_some(), "c exits on SIGKILL");
    drop(c);
    let c = start_instance(config);
    assert_eq!(phase_of(&c), 6.0, "restarted c runs phase 6 mid-cutover");
    let write = ci_write(&c, "restarted-c");
    tokio::time::sleep(Duration::from_secs(1)).await;
    if write.is_finished() {
        panic!("restarted c does not hold ci writes: {:?}", write.await);
    }
    (c, write)
}

/// Test 4: `c` is SIGKILLed and restarted during the catch-up, `d` loses etcd (a network cut)
/// while it holds a ci write; the cutover completes without `d`, whose write stays held until
/// its link is back and then goes to the CI primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_restarted_or_cut_off_mid_cutover_end_in_the_right_phase() {
    let _serial = serial().await;
    let lab = start_lab().await;
    let link = Link::to(&lab.etcd_endpoint());
    let (prefix, cutover) = (
        prefix("restart"),
        "catchup_timeout = 60.0\nswitch_timeout = 5.0",
    );
    let (etcd, cut) = (lab.etcd_endpoint(), link.endpoint());
    let a = start_instance(&instance_config(&lab, &etcd, &prefix, "a", cutover));
    let c_config = instance_config(&lab, &etcd, &prefix, "c", cutover);
    let c = start_instance(&c_config);
    let d = start_instance(&instance_config(&lab, &cut, &prefix, "d", cutover));
    set_phase(&a, 6);
    let ci_leader = lab.leader("ci");
    let ci_port = lab.pg_port(&ci_leader);
    lab.pause_replay(&ci_leader);
    let mut run = spawn_cutover(&a.config_path(), &[]);
    wait_step(&a, &mut run, "catchup").await;
    let d_write = ci_write(&d, "cut-off-d");
    wait_metric(&d, "d holds its ci write", held).await;
    link.cut();
    let (c, c_write) = kill_and_restart(c, &c_config).await;

    lab.resume_replay(&ci_leader);
    for p in [&a, &c] {
        wait_metric(p, "a and c switch to phase 7", phase_is(7.0)).await;
    }
    assert_eq!(
        landed(c_write, "c's held write").await,
        ci_port,
        "on the CI primary"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !d_write.is_finished(),
        "d, cut off, still holds its ci write"
    );
    assert!(
        held(&metrics(&d)) && phase_of(&d) == 6.0,
        "d cannot know the outcome yet"
    );
    link.restore();
    assert_eq!(
        landed(d_write, "d's held write").await,
        ci_port,
        "d learns phase 7 first"
    );
    wait_metric(&d, "d switches to phase 7", phase_is(7.0)).await;
    let run = tokio::task::spawn_blocking(move || run.finish(RUN_BOUND))
        .await
        .expect("run");
    eprintln!("[cutover] report: {}\n{}", run.report, run.stderr);
    run.expect("completed", 0);
    for p in [&a, &c, &d] {
        let port = landed(ci_write(p, "after"), "a ci write after the cutover").await;
        assert_eq!(
            port, ci_port,
            "every instance writes ci rows to the CI primary"
        );
    }
}
