//! Helpers of the cutover tests (tests/cutover*.rs): pgdecomp instances in a fleet in front of
//! a Patroni lab, the `pgdecomp cutover` CLI with a bounded wait (`cutover_cli.rs`), the admin
//! console, and a cuttable TCP link to etcd (`etcd_link.rs`: a network cut that leaves
//! Patroni's own etcd sessions alone, so main's leader is not demoted by the outage).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

use crate::common::patroni::PatroniLab;
use crate::common::proxy::{Proxy, ProxyConfig, ADMIN};
use crate::common::scrape::{metric, metrics};

#[path = "cutover_cli.rs"]
mod cli;
#[path = "etcd_link.rs"]
mod link;
pub use cli::*;
#[allow(unused_imports)]
pub use link::Link;

/// Bound of a whole cutover run (the sum of its steps' bounds here, and more).
pub const RUN_BOUND: Duration = Duration::from_secs(150);
/// Bound of every other wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// One lab or load at a time per test binary: two Patroni labs side by side on 2 cores make
/// every timing in them meaningless.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A fresh etcd key prefix for one fleet.
pub fn prefix(name: &str) -> String {
    format!("/pgdecomp-cutover-test/{}/{name}", std::process::id())
}

/// The fleet's `lease_ttl` unless a test needs another: a stopped instance leaves the listing
/// after it.
pub const LEASE_TTL: u32 = 4;

/// `[fleet]` for instance `name` and the given `[cutover]` body.
pub fn fleet_toml(endpoint: &str, prefix: &str, name: &str, ttl: u32, cutover: &str) -> String {
    format!(
        "\n[fleet]\netcd = [\"{endpoint}\"]\nprefix = \"{prefix}\"\ninstance = \"{name}\"\n\
         connect_timeout = 1.0\nrequest_timeout = 2.0\nlease_ttl = {ttl}\nretry_max = 0.5\n\
         \n[cutover]\n{cutover}\n"
    )
}

/// The config text of a phase-6 instance `name` in front of `lab`, following the fleet at
/// `endpoint`. Held transactions wait before checkout: the pool's wait bound is generous so
/// that a long hold (an abort after a timeout) is not cut short by it.
pub fn instance_config(
    lab: &PatroniLab,
    endpoint: &str,
    prefix: &str,
    name: &str,
    cutover: &str,
) -> String {
    instance_config_ttl(lab, endpoint, prefix, name, LEASE_TTL, cutover)
}

/// [`instance_config`] with another `lease_ttl`.
pub fn instance_config_ttl(
    lab: &PatroniLab,
    endpoint: &str,
    prefix: &str,
    name: &str,
    ttl: u32,
    cutover: &str,
) -> String {
    ProxyConfig::for_patroni(lab.rest_endpoints("main"), lab.rest_endpoints("ci"))
        .phase(6)
        .pool_size(12)
        .query_wait_timeout(90.0)
        .health("interval = 0.5\nstatement_timeout = 1.0\nprimary_wait = 30.0")
        .extra(&fleet_toml(endpoint, prefix, name, ttl, cutover))
        .build()
}

/// Starts an instance and waits until it knows main's primary and a ci server through Patroni:
/// until then its logins fail (FATAL 08006, no reachable server of the main cluster).
pub fn start_instance(config: &str) -> Proxy {
    let proxy = Proxy::start(config);
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics(&proxy);
        let main = metric(&m, "pgdecomp_server_writable", &[("cluster", "main")]);
        let ci = metric(&m, "pgdecomp_server_in_rotation", &[("cluster", "ci")]);
        if main >= 1.0 && ci >= 1.0 {
            return proxy;
        }
        assert!(
            Instant::now() < deadline,
            "the instance never found its servers:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the instances `names` and stores phase 6 in etcd (through the first one's config).
pub fn start_fleet(
    lab: &PatroniLab,
    endpoint: &str,
    prefix: &str,
    names: &[&str],
    cutover: &str,
) -> Vec<Proxy> {
    let proxies: Vec<Proxy> = names
        .iter()
        .map(|name| start_instance(&instance_config(lab, endpoint, prefix, name, cutover)))
        .collect();
    set_phase(&proxies[0], 6);
    proxies
}

/// `pgdecomp phase set N --wait 20`; panics unless every registered instance runs it.
pub fn set_phase(proxy: &Proxy, phase: u32) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgdecomp"))
        .args([
            "phase",
            "set",
            &phase.to_string(),
            "--wait",
            "20",
            "--config",
        ])
        .arg(proxy.config_path())
        .output()
        .expect("run pgdecomp phase set");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("every registered instance runs it"),
        "phase set {phase}:\n{text}"
    );
}

/// Waits until `pgdecomp phase show` lists `name` in sync with the stored phase.
pub fn wait_registered(proxy: &Proxy, name: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_pgdecomp"))
            .args(["phase", "show", "--config"])
            .arg(proxy.config_path())
            .output()
            .expect("run pgdecomp phase show");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let listed = text
            .lines()
            .any(|l| l.starts_with(&format!("{name} ")) && l.contains("in sync"));
        if listed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never registered again:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The phase `proxy` runs, from its metrics.
pub fn phase_of(proxy: &Proxy) -> f64 {
    metric(&metrics(proxy), "pgdecomp_phase", &[])
}

/// A copy of `proxy`'s config with the `[cutover]` body replaced by `cutover`, written next to
/// it, for a CLI run with other settings than the instances'.
pub fn variant(proxy: &Proxy, tag: &str, cutover: &str) -> PathBuf {
    let text = std::fs::read_to_string(proxy.config_path()).expect("read config");
    let (head, _) = text.split_once("\n[cutover]\n").expect("a [cutover] table");
    let path = proxy.dir().join(format!("cutover-{tag}.toml"));
    std::fs::write(&path, format!("{head}\n[cutover]\n{cutover}\n")).expect("write variant");
    path
}

/// An admin console session (`pgdecomp` database) on `proxy`.
pub async fn admin(proxy: &Proxy) -> tokio_postgres::Client {
    proxy
        .connect_with(&proxy.config(ADMIN.0, ADMIN.1, "pgdecomp"))
        .await
}

/// The rows of `sql` on the admin console as (column, value) pairs.
pub async fn admin_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<(String, String)>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// `SHOW CUTOVER` on `proxy`: its (first) row by column name.
pub async fn show_cutover(proxy: &Proxy) -> std::collections::HashMap<String, String> {
    let client = admin(proxy).await;
    let rows = admin_rows(&client, "SHOW CUTOVER")
        .await
        .expect("SHOW CUTOVER");
    rows.into_iter()
        .next()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Waits until `SHOW CUTOVER` on `proxy` says `step` while the outcome is still open.
pub async fn wait_step(proxy: &Proxy, pending: &mut Pending, step: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let row = show_cutover(proxy).await;
        if row.get("step").map(String::as_str) == Some(step) {
            return;
        }
        assert!(
            pending.is_running() && Instant::now() < deadline,
            "SHOW CUTOVER never said step {step}: {row:?}\ncutover stderr:\n{}",
            pending.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The SQLSTATE and message of an admin console error (panics on success).
pub fn db_error<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    what: &str,
) -> (String, String) {
    let err = result.expect_err(what);
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error: {err:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// The CI cluster is still a standby cluster: a standby leader, nobody writable.
pub fn assert_ci_standby(lab: &PatroniLab) {
    let roles = lab.roles("ci");
    assert!(
        roles.iter().any(|(_, r)| r == "standby_leader")
            && !roles
                .iter()
                .any(|(_, r)| matches!(r.as_str(), "leader" | "master" | "primary")),
        "ci should still be a standby cluster: {roles:?}"
    );
}

/// A CI leader that is writable now.
pub fn ci_writable(lab: &PatroniLab) -> bool {
    let leader = lab.leader("ci");
    lab.try_psql(&leader, "postgres", "select pg_is_in_recovery()")
        .as_deref()
        == Ok("f")
}

/// Parses a pg_lsn "X/Y".
pub fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    let hex =
        |s: &str| u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    (hex(hi) << 32) | hex(lo)
}
