//! Shutdown (issue 13, in part): SIGTERM and the admin SHUTDOWN stop accepting, let every
//! transaction that has started finish, close each client at its next idle point with 57P01, and
//! exit within shutdown_timeout; SIGINT exits at once.

mod common;

use common::cluster::{run_bounded, Kind, Topology, BOUND, DATABASE};
use common::proxy::{connect, Proxy, ProxyConfig, GITLAB};
use std::process::Command;
use std::time::{Duration, Instant};

fn topology() -> &'static Topology {
    Topology::shared(Kind::MainOnly)
}

fn proxy() -> Proxy {
    Proxy::start(&format!(
        "shutdown_timeout = 20.0\n{}",
        ProxyConfig::new(topology()).build()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_started_transaction_commit_then_closes_and_exits() {
    let topo = topology();
    let mut proxy = proxy();
    let client = proxy.connect().await;
    let idle = proxy.connect().await;
    client.batch_execute("begin").await.expect("begin");
    client
        .execute("insert into projects (name) values ('drain-1')", &[])
        .await
        .expect("first write");
    proxy.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        connect(&proxy.app_config()).await.is_err(),
        "no new connection after the signal"
    );
    client
        .execute("insert into projects (name) values ('drain-2')", &[])
        .await
        .expect("the started transaction goes on");
    client.batch_execute("commit").await.expect("and commits");
    let err = client
        .simple_query("select 1")
        .await
        .expect_err("then the session is closed");
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.code().code() == "57P01")
            || err.is_closed(),
        "{err:?}"
    );
    assert!(
        idle.simple_query("select 1").await.is_err(),
        "an idle client is closed at once"
    );
    let status = proxy
        .wait_exit(BOUND)
        .expect("exits once no client is left");
    assert!(status.success(), "{status:?}\n{}", proxy.log());
    let rows = topo.psql(
        topo.main_primary(),
        DATABASE,
        "select count(*) from projects where name in ('drain-1', 'drain-2')",
    );
    assert_eq!(
        rows, "2",
        "both writes of the started transaction are committed"
    );
}

#[test]
fn sigterm_during_pgbench_cuts_no_started_transaction() {
    let topo = topology();
    topo.psql(
        topo.main_primary(),
        DATABASE,
        "create table if not exists drain_log (client int, step int); grant all on drain_log to gitlab",
    );
    let mut proxy = proxy();
    let script = topo.temp_dir().join("txn.sql");
    std::fs::write(
        &script,
        "begin;\ninsert into drain_log values (:client_id, 1);\nselect pg_sleep(0.002);\n\
         insert into drain_log values (:client_id, 2);\ncommit;\n",
    )
    .expect("write script");
    let port = proxy.port();
    let bench = std::thread::spawn(move || {
        run_bounded(
            Command::new("pgbench")
                .args([
                    "-n",
                    "-c",
                    "32",
                    "-j",
                    "2",
                    "-T",
                    "20",
                    "-h",
                    "127.0.0.1",
                    "-p",
                ])
                .arg(port.to_string())
                .args(["-U", GITLAB.0, "-f"])
                .arg(&script)
                .arg(DATABASE)
                .env("PGPASSWORD", GITLAB.1),
            "",
            BOUND,
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    let signalled = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(BOUND).expect("exits within the bound");
    eprintln!("exited {:?} after SIGTERM: {status:?}", signalled.elapsed());
    let out = bench.join().expect("pgbench thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every client that lost its connection lost it before starting a transaction (command 0,
    // the BEGIN), never in the middle of one.
    let aborted: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("aborted in command"))
        .collect();
    assert!(!aborted.is_empty(), "pgbench clients were closed: {stderr}");
    for line in &aborted {
        assert!(
            line.contains("aborted in command 0 "),
            "a transaction was cut: {line}\n{stderr}"
        );
    }
    // Each committed transaction left both of its rows.
    let unpaired = topo.psql(
        topo.main_primary(),
        DATABASE,
        "select count(*) from (select client from drain_log group by client \
         having count(*) filter (where step = 1) <> count(*) filter (where step = 2)) x",
    );
    assert_eq!(unpaired, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shutdown_drains_and_sigint_is_immediate() {
    let mut proxy = proxy();
    let client = proxy.connect().await;
    client.batch_execute("begin").await.expect("begin");
    client
        .execute("select count(*) from projects", &[])
        .await
        .expect("read");
    let admin = run_bounded(
        Command::new("psql")
            .args(["-X", "-At", "-h", "127.0.0.1", "-p"])
            .arg(proxy.port().to_string())
            .args(["-U", "admin", "-d", "pgdecomp", "-c", "SHUTDOWN"])
            .env("PGPASSWORD", "admin"),
        "",
        BOUND,
    );
    assert!(
        admin.status.success(),
        "{}",
        String::from_utf8_lossy(&admin.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        proxy.wait_exit(Duration::from_millis(10)).is_none(),
        "waits for the open transaction"
    );
    // SIGINT does not wait.
    proxy.signal("INT");
    assert!(proxy.wait_exit(BOUND).is_some(), "SIGINT exits at once");
    assert!(client.batch_execute("commit").await.is_err());
}

/// A second pgdecomp on a port already taken does not start, and says which setting and
/// address it could not bind (the first keeps serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_listen_port_is_named_in_the_start_error() {
    let first = proxy();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_pgdecomp"))
            .arg("run")
            .arg("--config")
            .arg(first.config_path())
            .current_dir(first.dir()),
        "",
        BOUND,
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "the second instance must not start: {said}"
    );
    let wanted = format!("listen = \"127.0.0.1:{}\"", first.port());
    assert!(
        said.contains(&wanted) && said.contains("in use"),
        "the error names {wanted} and the cause: {said}"
    );
    let client = first.connect().await;
    client
        .simple_query("select 1")
        .await
        .expect("the first still serves");
}
