//! Fleet coordination through a real etcd (issue 11's foundation): `pgdecomp phase set`
//! switches every running instance, an instance started later takes the phase from etcd over
//! its phase_file, and one that starts without etcd keeps its file's phase until etcd answers.
//! Routing is proven by the server's own `inet_server_port()`, never by the proxy's claim.

mod common;
#[path = "common/etcd.rs"]
mod etcd;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{free_port, Kind, Topology};
use common::proxy::{Proxy, ProxyConfig};
use common::scrape::{metric, metrics};
use etcd::Etcd;
use tokio_postgres::SimpleQueryMessage;

/// A ci read: in phase 1 it goes to the main replica, in phase 4 to the CI replica.
const CI_READ: &str = "SELECT inet_server_port(), (SELECT count(*) FROM ci_builds)";

fn fleet_toml(endpoint: &str, prefix: &str, instance: &str) -> String {
    format!(
        "\n[fleet]\netcd = [\"{endpoint}\"]\nprefix = \"{prefix}\"\ninstance = \"{instance}\"\n\
         connect_timeout = 1.0\nrequest_timeout = 2.0\nlease_ttl = 4\nretry_max = 0.5\n"
    )
}

/// A proxy whose phase_file says `phase`, following the fleet at `endpoint`.
fn proxy(topo: &Topology, endpoint: &str, prefix: &str, name: &str, phase: u32) -> Proxy {
    Proxy::start(
        &ProxyConfig::new(topo)
            .phase(phase)
            .extra(&fleet_toml(endpoint, prefix, name))
            .build(),
    )
}

/// The port of the server that answered a ci read through `proxy`.
async fn ci_read_port(proxy: &Proxy) -> u16 {
    let client = proxy.connect().await;
    let rows = client.simple_query(CI_READ).await.expect(CI_READ);
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().expect("port")),
            _ => None,
        })
        .expect("a row")
}

/// Runs `pgdecomp phase ARGS --config CONFIG` and returns (success, stdout + stderr).
fn phase_cli(proxy: &Proxy, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgdecomp"))
        .arg("phase")
        .args(args)
        .arg("--config")
        .arg(proxy.config_path())
        .output()
        .expect("run pgdecomp phase");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Waits (bounded) until a ci read through `proxy` lands on `port`.
async fn wait_ci_read_on(proxy: &Proxy, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = ci_read_port(proxy).await;
        if got == port {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: ci read still on {got}, want {port}\nlog:\n{}",
                proxy.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn prefix(test: &str) -> String {
    format!("/pgdecomp-test/{}/{test}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_set_switches_the_fleet_and_a_late_instance_starts_in_it() {
    let topo = Topology::shared(Kind::Full);
    let etcd = Etcd::start();
    let prefix = prefix("switch");
    let (main_replica, ci_replica) = (topo.main_replica(), topo.ci_replica());
    let a = proxy(topo, &etcd.endpoint(), &prefix, "a", 1);
    let b = proxy(topo, &etcd.endpoint(), &prefix, "b", 1);
    for p in [&a, &b] {
        assert_eq!(
            ci_read_port(p).await,
            main_replica,
            "phase 1 reads ci on main"
        );
    }

    let (ok, out) = phase_cli(&a, &["set", "4", "--wait", "20"]);
    assert!(
        ok,
        "phase set 4 failed:\n{out}\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert!(out.contains("every registered instance runs it"), "{out}");
    for p in [&a, &b] {
        // Applied before `phase set` returned: no waiting here.
        assert_eq!(
            ci_read_port(p).await,
            ci_replica,
            "phase 4 reads ci on the CI replica"
        );
        let m = metrics(p);
        assert_eq!(metric(&m, "pgdecomp_fleet_connected", &[]), 1.0);
        assert_eq!(metric(&m, "pgdecomp_phase", &[]), 4.0);
        assert!(metric(&m, "pgdecomp_fleet_phase_revision", &[]) > 0.0);
    }

    // Started after the switch, with phase_file still at phase 1: its first read is phase 4.
    let c = proxy(topo, &etcd.endpoint(), &prefix, "c", 1);
    assert_eq!(
        ci_read_port(&c).await,
        ci_replica,
        "late instance takes etcd's phase"
    );
    let (ok, out) = phase_cli(&c, &["show"]);
    assert!(ok, "{out}");
    for name in ["a", "b", "c"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("instance {name} not listed:\n{out}"));
        assert!(
            line.contains("phase-4.toml") && line.contains("in sync"),
            "{line}"
        );
    }

    // SIGHUP re-reads the config but keeps etcd's phase over phase_file's (which says 1).
    let reloads = |p: &Proxy| p.log().matches("configuration reloaded").count();
    let before = reloads(&a);
    a.reload();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reloads(&a) == before {
        assert!(Instant::now() < deadline, "no reload logged:\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ci_read_port(&a).await,
        ci_replica,
        "SIGHUP keeps etcd's phase"
    );

    // Back to phase 1, all three together.
    let (ok, out) = phase_cli(&b, &["set", "1", "--wait", "20"]);
    assert!(ok, "phase set 1 failed:\n{out}");
    for p in [&a, &b, &c] {
        assert_eq!(ci_read_port(p).await, main_replica, "phase 1 again");
    }
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_seven_and_bad_values_are_refused_without_changing_the_fleet() {
    let topo = Topology::shared(Kind::Full);
    let etcd = Etcd::start();
    let prefix = prefix("refuse");
    let a = proxy(topo, &etcd.endpoint(), &prefix, "a", 1);
    let (ok, out) = phase_cli(&a, &["set", "7", "--wait", "0"]);
    assert!(
        !ok && out.contains("cutover"),
        "phase 7 without --force:\n{out}"
    );
    let (ok, out) = phase_cli(&a, &["set", "../../etc/passwd", "--wait", "0"]);
    assert!(!ok && out.contains("invalid phase value"), "{out}");
    let (ok, out) = phase_cli(&a, &["show"]);
    assert!(ok && out.contains("not set"), "nothing was stored:\n{out}");
    assert_eq!(ci_read_port(&a).await, topo.main_replica());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_at_start_the_file_phase_serves_until_etcd_answers() {
    let topo = Topology::shared(Kind::Full);
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let prefix = prefix("late-etcd");
    let started = Instant::now();
    let a = proxy(topo, &endpoint, &prefix, "a", 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "start is bounded"
    );
    assert_eq!(
        ci_read_port(&a).await,
        topo.main_replica(),
        "file phase without etcd"
    );
    assert_eq!(metric(&metrics(&a), "pgdecomp_fleet_connected", &[]), 0.0);
    assert!(
        a.log().contains("etcd unreachable"),
        "logged loudly:\n{}",
        a.log()
    );

    let etcd = Etcd::start_on(port);
    let (ok, out) = phase_cli(&a, &["set", "4", "--wait", "30"]);
    assert!(
        ok,
        "the instance reconnects and applies the phase:\n{out}\n{}",
        a.log()
    );
    wait_ci_read_on(&a, topo.ci_replica(), "after etcd came up").await;
    drop(etcd);
}
