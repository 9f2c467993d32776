//! Operations end to end: phase switches by SIGHUP under load, broken reloads that keep the old
//! config, and the admin console (every SHOW, PAUSE/RESUME, refusal of non-admins) through psql.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{wait_until, Kind, Topology, BOUND};
use common::proxy::{psql_command, Proxy, ProxyConfig, ADMIN};
use common::scrape::{metric, metrics};
use tokio_postgres::SimpleQueryMessage;

fn topology() -> &'static Topology {
    Topology::shared(Kind::Full)
}

fn shipped_phase(n: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("phases/phase-{n}.toml"))
}

/// A proxy whose phase file is a private copy (`active.toml`) the test can overwrite; the
/// phase-7 file sits next to it because phases 4–6 name it as their shadow.
fn proxy_with_active_phase(topo: &Topology, phase: u32) -> (Proxy, PathBuf) {
    let dir = topo.temp_dir();
    let active = dir.join("active.toml");
    std::fs::copy(shipped_phase(phase), &active).expect("copy phase file");
    std::fs::copy(shipped_phase(7), dir.join("phase-7.toml")).expect("copy shadow phase");
    let config = ProxyConfig::new(topo)
        .pool_size(10)
        .max_client_conn(200)
        .build();
    let shipped = format!("phase_file = \"{}\"", shipped_phase(1).display());
    assert!(
        config.contains(&shipped),
        "config layout changed:\n{config}"
    );
    let config = config.replace(&shipped, &format!("phase_file = \"{}\"", active.display()));
    (Proxy::start(&config), active)
}

fn reloads(proxy: &Proxy, result: &str) -> f64 {
    metric(
        &metrics(proxy),
        "pgdecomp_config_reload_total",
        &[("result", result)],
    )
}

/// Sends SIGHUP and waits until the reload counter for `result` moved past `before`.
fn reload_and_wait(proxy: &Proxy, result: &str, before: f64) {
    proxy.reload();
    wait_until(&format!("a reload with result {result}"), || {
        reloads(proxy, result) > before
    });
}

async fn ci_read_port(client: &tokio_postgres::Client) -> Result<u16, tokio_postgres::Error> {
    let rows = client
        .simple_query("select inet_server_port() from ci_builds limit 1")
        .await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .expect("one row"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_see_no_error_across_twenty_phase_reloads() {
    let topo = topology();
    let (proxy, active) = proxy_with_active_phase(topo, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..50 {
        let client = proxy.connect().await;
        let (stop, done) = (stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A transaction and a plain read: both must survive every reload.
                client
                    .batch_execute("begin; select count(*) from projects; commit")
                    .await
                    .map_err(|e| format!("transaction: {e:?}"))?;
                ci_read_port(&client)
                    .await
                    .map_err(|e| format!("read: {e:?}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    let probe = proxy.connect().await;
    for i in 0..20u32 {
        // Alternate phase 1 (ci reads on main replicas) and phase 3 (ci reads on CI replicas).
        let phase = if i % 2 == 0 { 3 } else { 1 };
        std::fs::copy(shipped_phase(phase), &active).expect("switch phase file");
        let before = reloads(&proxy, "ok");
        reload_and_wait(&proxy, "ok", before);
        let want = if phase == 3 {
            topo.ci_replica()
        } else {
            topo.main_replica()
        };
        let port = ci_read_port(&probe).await.expect("probe read");
        assert_eq!(
            port, want,
            "after reload {i} to phase {phase} ci reads must follow it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let r = tokio::time::timeout(BOUND, w)
            .await
            .expect("worker finishes");
        r.expect("worker task")
            .expect("no client saw an error or a disconnect");
    }
    assert!(
        done.load(Ordering::Relaxed) >= 50,
        "the clients made progress"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_reload_keeps_the_old_config() {
    let topo = topology();
    let (proxy, active) = proxy_with_active_phase(topo, 3);
    let client = proxy.connect().await;
    assert_eq!(ci_read_port(&client).await.unwrap(), topo.ci_replica());
    let good = std::fs::read_to_string(proxy.config_path()).expect("read config");

    // 1. A syntax error in the phase file.
    std::fs::write(&active, "phase = [ this is not toml").expect("break phase file");
    reload_and_wait(&proxy, "error", reloads(&proxy, "error"));
    assert!(
        proxy.log().contains("reload failed"),
        "the error is logged:\n{}",
        proxy.log()
    );
    assert_eq!(
        ci_read_port(&client).await.unwrap(),
        topo.ci_replica(),
        "old phase still live"
    );

    // 2. An unknown target in the config itself, reported to an admin RELOAD caller too.
    let broken = good.replacen("[clusters.main]", "[clusters.main]\nnot_a_key = 1", 1);
    std::fs::write(proxy.config_path(), broken).expect("break config");
    let before = reloads(&proxy, "error");
    let out = psql_admin(&proxy, "RELOAD");
    assert!(!out.status.success(), "RELOAD must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not_a_key"),
        "RELOAD caller sees the reason: {stderr}"
    );
    assert!(
        reloads(&proxy, "error") > before,
        "failed RELOAD is counted"
    );
    assert_eq!(
        ci_read_port(&client).await.unwrap(),
        topo.ci_replica(),
        "old config still live"
    );

    // Fixing the files and reloading applies them.
    std::fs::write(proxy.config_path(), good).expect("restore config");
    std::fs::copy(shipped_phase(1), &active).expect("phase 1");
    reload_and_wait(&proxy, "ok", reloads(&proxy, "ok"));
    assert_eq!(ci_read_port(&client).await.unwrap(), topo.main_replica());
}

/// Runs `sql` on the admin console with psql as the admin user.
fn psql_admin(proxy: &Proxy, sql: &str) -> std::process::Output {
    psql_as(proxy, ADMIN, "pgdecomp", sql)
}

fn psql_as(proxy: &Proxy, user: (&str, &str), db: &str, sql: &str) -> std::process::Output {
    psql_command(proxy, user, db)
        .args(["-c", sql])
        .output()
        .expect("run psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_shows_pauses_and_refuses_non_admins() {
    let topo = topology();
    let proxy = Proxy::with(topo, |c| c.pool_size(4));
    let app = proxy.connect().await;
    app.simple_query("select count(*) from projects")
        .await
        .unwrap();
    for cmd in [
        "SHOW VERSION",
        "SHOW PHASE",
        "SHOW POOLS",
        "SHOW SERVERS",
        "SHOW CLIENTS",
        "SHOW STATS",
        "SHOW CONFIG",
        "SHOW DATABASES",
        "SHOW SCHEMAS",
        "SHOW VIOLATIONS",
    ] {
        let out = psql_admin(&proxy, cmd);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let version = String::from_utf8_lossy(&psql_admin(&proxy, "SHOW VERSION").stdout).to_string();
    assert!(version.contains("pgdecomp"), "{version}");
    let clients = String::from_utf8_lossy(&psql_admin(&proxy, "SHOW CLIENTS").stdout).to_string();
    assert!(
        clients.contains("gitlab"),
        "SHOW CLIENTS lists the app client: {clients}"
    );

    // A non-admin user is refused.
    let out = psql_as(&proxy, ("gitlab", "gitlab"), "pgdecomp", "SHOW VERSION");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an admin user"));

    // PAUSE waits for the running transaction, then holds new ones until RESUME.
    let running = proxy.connect().await;
    running
        .batch_execute("begin; update projects set name = name where id = 1")
        .await
        .unwrap();
    let pause = {
        let port = proxy.port();
        std::thread::spawn(move || {
            let started = Instant::now();
            let out = Command::new("psql")
                .args([
                    "-X",
                    "-At",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "admin",
                ])
                .args(["-d", "pgdecomp", "-c", "PAUSE main"])
                .env("PGPASSWORD", "admin")
                .output()
                .expect("run psql");
            (out, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE waits for the running transaction"
    );
    running
        .batch_execute("commit")
        .await
        .expect("the running transaction finishes");
    let (out, _) = pause.join().expect("pause thread");
    assert!(
        out.status.success(),
        "PAUSE: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let held = proxy.connect().await;
    let write = tokio::spawn(async move {
        held.simple_query("update projects set name = name where id = 1")
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !write.is_finished(),
        "a new transaction is held while paused"
    );
    let out = psql_admin(&proxy, "RESUME main");
    assert!(
        out.status.success(),
        "RESUME: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::timeout(BOUND, write)
        .await
        .expect("held transaction runs after RESUME")
        .expect("task")
        .expect("held client sees no error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_pool_settings_and_drains_removed_servers() {
    let topo = topology();
    let proxy = Proxy::with(topo, |c| c.pool_size(4));
    let client = proxy.connect().await;
    client
        .simple_query("select count(*) from projects")
        .await
        .unwrap();
    let pools = String::from_utf8_lossy(&psql_admin(&proxy, "SHOW POOLS").stdout).to_string();
    let replica = format!("127.0.0.1:{}", topo.main_replica());
    assert!(
        pools.contains(&replica),
        "the read used the main replica's pool: {pools}"
    );

    // Drop the main replica from the config and grow the pools.
    let config = std::fs::read_to_string(proxy.config_path()).expect("read config");
    let config = config
        .replace(&format!("\"{replica}\""), "")
        .replace("pool_size = 4", "pool_size = 6");
    std::fs::write(proxy.config_path(), config).expect("write config");
    let before = reloads(&proxy, "ok");
    reload_and_wait(&proxy, "ok", before);
    wait_until("the removed replica's pool to drain", || {
        let pools = String::from_utf8_lossy(&psql_admin(&proxy, "SHOW POOLS").stdout).to_string();
        !pools.contains(&replica)
    });
    // The same client keeps working; its reads now fall back to the main primary.
    let rows = client
        .simple_query("select inet_server_port() from projects limit 1")
        .await
        .unwrap();
    let port: u16 = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .expect("a row");
    assert_eq!(port, topo.main_primary());
    let pools = String::from_utf8_lossy(&psql_admin(&proxy, "SHOW POOLS").stdout).to_string();
    assert!(
        pools.lines().all(|l| l.split('|').nth(7) == Some("6")),
        "new pool size: {pools}"
    );
}
