//! Proxy core acceptance through real clients (psql, pgbench, tokio-postgres, a raw socket)
//! against real PostgreSQL servers: pooling, protocol pass-through, cancel, auth failures,
//! malformed input and a server dying mid-transaction.

mod common;

use common::cluster::{run_bounded, wait_until, Backend, Kind, Topology, DATABASE};
use common::proxy::{connect, Proxy, GITLAB};
use common::raw::{RawConn, Refusal};
use futures_util::{SinkExt, StreamExt};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn topology() -> &'static Topology {
    Topology::shared(Kind::Full)
}

/// psql as `gitlab` through the proxy, script on stdin, errors not fatal to the script.
fn psql_through(port: u16, script: &str) -> (String, String) {
    let out = run_bounded(
        Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=0", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["-U", GITLAB.0, "-d", DATABASE, "-f", "-"])
            .env("PGPASSWORD", GITLAB.1)
            .env("PGCONNECT_TIMEOUT", "10"),
        script,
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "psql failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.as_db_error().map(|db| db.code())
}

#[test]
fn psql_queries_meta_commands_and_errors() {
    let proxy = Proxy::with(topology(), |c| c);
    let (out, err) = psql_through(
        proxy.port(),
        "\\set VERBOSITY verbose\n\
         select count(*) as project_count from projects;\n\
         \\d projects\n\
         select 1/0;\n\
         select 'still usable' as after_error;\n",
    );
    assert!(out.contains("project_count"), "count query:\n{out}");
    assert!(
        out.contains("Table \"public.projects\"") && out.contains("namespace_id"),
        "\\d projects output:\n{out}"
    );
    assert!(
        err.contains("ERROR:  22012: division by zero"),
        "the server's error must arrive unchanged:\n{err}"
    );
    assert!(
        out.contains("still usable"),
        "the session must survive the error:\n{out}\n{err}"
    );
}

/// Runs pgbench and returns (transactions processed, tps line); panics on any failure.
fn pgbench(port: u16, args: &[&str]) -> (u64, String) {
    let out = run_bounded(
        Command::new(format!("{PG_BIN}/pgbench"))
            .args(["-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["-U", GITLAB.0, "-n", "-c", "32", "-j", "2", "-T", "3"])
            .args(args)
            .arg(DATABASE)
            .env("PGPASSWORD", GITLAB.1),
        "",
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("pgbench {args:?} ({}):\n{stdout}\n{stderr}", out.status);
    assert!(out.status.success(), "{report}");
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "no transaction may fail: {report}"
    );
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in {report}"));
    assert!(processed > 0, "no transactions processed: {report}");
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or_default()
        .to_string();
    (processed, tps)
}

#[test]
fn pgbench_32_clients_over_8_server_connections() {
    let topo = topology();
    let init = run_bounded(
        Command::new(format!("{PG_BIN}/pgbench"))
            .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p"])
            .arg(topo.main_primary().to_string())
            .args(["-U", GITLAB.0, DATABASE])
            .env("PGPASSWORD", GITLAB.1),
        "",
        Duration::from_secs(120),
    );
    assert!(
        init.status.success(),
        "pgbench -i on the primary: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    // -S reads go to the replica, which must have the tables first.
    topo.sync_replicas();
    let proxy = Proxy::with(topo, |c| c.pool_size(8));
    for args in [
        &["-S", "-M", "simple"][..],
        &["-S", "-M", "extended"],
        &["-S", "-M", "prepared"],
        &[],
        &["-C"],
    ] {
        let (processed, tps) = pgbench(proxy.port(), args);
        eprintln!("pgbench {args:?}: {processed} transactions, {tps}");
    }
    // The work-stealing runtime (`workers = 2`) serves the same traffic, and reads and writes
    // still land where phase 1 puts them.
    let proxy = Proxy::with(topo, |mut c| {
        c.workers = 2;
        c.pool_size(8)
    });
    for args in [&["-S", "-M", "extended"][..], &[]] {
        let (processed, tps) = pgbench(proxy.port(), args);
        eprintln!("workers = 2, pgbench {args:?}: {processed} transactions, {tps}");
    }
    let (out, _) = psql_through(
        proxy.port(),
        "SELECT 'read on ' || inet_server_port();\n\
         BEGIN; SELECT 'write on ' || inet_server_port(); COMMIT;\n",
    );
    let read = format!("read on {}", topo.main_replica());
    let write = format!("write on {}", topo.main_primary());
    assert!(out.contains(&read) && out.contains(&write), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_survive_pool_churn() {
    let proxy = Proxy::with(topology(), |c| c.pool_size(2));
    let churners: Vec<_> = (0..8)
        .map(|i| {
            let config = proxy.app_config();
            tokio::spawn(async move {
                let client = connect(&config).await.expect("churn client connects");
                let stmt = client
                    .prepare(&format!("select $1::int8 + {i}"))
                    .await
                    .expect("churn prepare");
                for n in 0..40i64 {
                    let row = client.query_one(&stmt, &[&n]).await.expect("churn query");
                    assert_eq!(row.get::<_, i64>(0), n + i);
                    client
                        .batch_execute("begin; select count(*) from users; commit")
                        .await
                        .expect("churn transaction");
                }
            })
        })
        .collect();

    let mut client = proxy.connect().await;
    let by_id = client
        .prepare("select name from projects where id = $1")
        .await
        .unwrap();
    let count = client
        .prepare("select count(*) from issues where project_id = $1")
        .await
        .unwrap();
    for round in 0..40i64 {
        let id = 1 + round % 5;
        let tx = client.transaction().await.unwrap();
        let name: String = tx.query_one(&by_id, &[&id]).await.unwrap().get(0);
        assert_eq!(name, format!("project-{id}"));
        tx.query_one(&count, &[&id]).await.unwrap();
        tx.commit().await.unwrap();
        let name: String = client.query_one(&by_id, &[&id]).await.unwrap().get(0);
        assert_eq!(name, format!("project-{id}"), "outside a transaction");
    }
    for churner in churners {
        tokio::time::timeout(Duration::from_secs(60), churner)
            .await
            .expect("churn clients finish within 60 s")
            .expect("churn client succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_100k_rows_in_and_out_byte_identical() {
    let proxy = Proxy::with(topology(), |c| c);
    let client = proxy.connect().await;
    client
        .batch_execute("create table copy_check (id bigint primary key, name text, note text)")
        .await
        .unwrap();
    let mut data = Vec::new();
    for i in 0..100_000u32 {
        // Tabs, backslash escapes and non-ASCII make the round trip meaningful.
        data.extend_from_slice(format!("{i}\tname-{i}\tnote \\t{i} \u{e9}\\\\\n").as_bytes());
    }
    let sink = client
        .copy_in("copy copy_check from stdin")
        .await
        .expect("COPY FROM STDIN starts");
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(64 * 1024) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .expect("send COPY data");
    }
    let rows = sink.finish().await.expect("COPY FROM STDIN completes");
    assert_eq!(rows, 100_000);

    let mut client = client;
    // In a transaction, so it runs on the primary that has the rows, not a lagging replica.
    let tx = client.transaction().await.unwrap();
    let stream = tx
        .copy_out("copy (select * from copy_check order by id) to stdout")
        .await
        .expect("COPY TO STDOUT starts");
    futures_util::pin_mut!(stream);
    let mut back = Vec::with_capacity(data.len());
    while let Some(chunk) = stream.next().await {
        back.extend_from_slice(&chunk.expect("COPY data"));
    }
    tx.commit().await.unwrap();
    assert_eq!(back.len(), data.len(), "COPY out length");
    assert!(back == data, "COPY out must be byte-identical to COPY in");
    client.batch_execute("drop table copy_check").await.unwrap();
}

/// Waits until some server of the topology runs exactly `sql`.
fn wait_running(topo: &Topology, sql: &str) {
    let check =
        format!("select count(*) from pg_stat_activity where query = '{sql}' and state = 'active'");
    wait_until(&format!("a server to run {sql}"), || {
        topo.nodes()
            .iter()
            .any(|&n| topo.try_psql(topo.port(n), "postgres", &check).as_deref() == Ok("1"))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_cancels_only_its_own_query() {
    let topo = topology();
    let proxy = Proxy::with(topo, |c| c.pool_size(4));
    let victim = proxy.connect().await;
    let bystander = proxy.connect().await;
    let token = victim.cancel_token();

    let long = tokio::spawn(async move {
        let started = Instant::now();
        let result = victim.simple_query("select pg_sleep(30)").await;
        (result, started.elapsed())
    });
    let short = tokio::spawn(async move { bystander.simple_query("select pg_sleep(2)").await });
    tokio::task::spawn_blocking(move || {
        wait_running(topo, "select pg_sleep(30)");
        wait_running(topo, "select pg_sleep(2)");
    })
    .await
    .unwrap();

    token
        .cancel_query(NoTls)
        .await
        .expect("cancel request is accepted");
    let (result, elapsed) = tokio::time::timeout(Duration::from_secs(10), long)
        .await
        .expect("the cancelled query ends within 10 s")
        .unwrap();
    let err = result.expect_err("pg_sleep(30) must be cancelled");
    assert_eq!(sqlstate(&err), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(elapsed < Duration::from_secs(15), "cancel took {elapsed:?}");
    tokio::time::timeout(Duration::from_secs(10), short)
        .await
        .expect("the other client's query finishes")
        .unwrap()
        .expect("the other client's query must not be cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_over_twenty_server_connections() {
    let proxy = Proxy::with(topology(), |c| c.pool_size(20).max_client_conn(1000));
    let config = proxy.app_config();
    let clients: Vec<_> = (0..500i32)
        .map(|i| {
            let config = config.clone();
            tokio::spawn(async move {
                let client = connect(&config).await?;
                let row = client.query_one("select $1::int4 + 1", &[&i]).await?;
                assert_eq!(row.get::<_, i32>(0), i + 1);
                client
                    .batch_execute("begin; select count(*) from projects; commit")
                    .await?;
                client.simple_query("select 1").await?;
                Ok::<_, tokio_postgres::Error>(())
            })
        })
        .collect();
    let all = futures_util::future::join_all(clients);
    let results = tokio::time::timeout(Duration::from_secs(180), all)
        .await
        .unwrap_or_else(|_| panic!("500 clients did not finish in 180 s\n{}", proxy.log()));
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:?}")),
            Err(e) => Some(format!("client task panicked: {e}")),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 500 clients failed, first: {}",
        failures.len(),
        failures[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_gives_a_clear_error() {
    let proxy = Proxy::with(topology(), |c| c.pool_size(1).query_wait_timeout(1.0));
    let holder = proxy.connect().await;
    holder.batch_execute("begin").await.unwrap();
    holder
        .query_one("select count(*) from projects", &[])
        .await
        .expect("the holder gets the only server connection");

    let waiter = proxy.connect().await;
    let started = Instant::now();
    // In a transaction too, so it needs the same (primary) pool as the holder.
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        waiter.batch_execute("begin; select count(*) from projects; commit"),
    )
    .await
    .expect("the waiter gets an answer within 15 s");
    let elapsed = started.elapsed();
    let err = result.expect_err("the waiter must time out while the only connection is held");
    let message = err
        .as_db_error()
        .map(|db| db.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(
        message.to_lowercase().contains("timeout"),
        "the error must say it was a wait timeout: {message:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "it must wait query_wait_timeout first, waited {elapsed:?}"
    );
    holder
        .batch_execute("commit")
        .await
        .expect("holder commits");
    proxy
        .connect()
        .await
        .batch_execute("begin; select count(*) from projects; commit")
        .await
        .expect("the pool works again once the connection is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_logins_get_fatal_errors() {
    let proxy = Proxy::with(topology(), |c| c);
    for (user, password, db, code) in [
        ("gitlab", "wrong", DATABASE, SqlState::INVALID_PASSWORD),
        ("nosuchuser", "x", DATABASE, SqlState::INVALID_PASSWORD),
        (
            "gitlab",
            "gitlab",
            "nosuchdb",
            SqlState::INVALID_CATALOG_NAME,
        ),
    ] {
        let err = connect(&proxy.config(user, password, db))
            .await
            .err()
            .unwrap_or_else(|| panic!("{user}/{password} on {db} must be refused"));
        let db_err = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{user} on {db}: expected an ErrorResponse, got {err:?}"));
        assert_eq!(db_err.code(), &code, "{user} on {db}: {db_err:?}");
        assert_eq!(db_err.severity(), "FATAL", "{user} on {db}: {db_err:?}");
        assert!(!db_err.message().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_messages_are_refused() {
    let proxy = Proxy::with(topology(), |c| c);
    let bystander = proxy.connect().await;
    let within = Duration::from_secs(10);

    let mut noise = vec![0xde, 0xad, 0xbe, 0xef];
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..252 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let http = b"GET / HTTP/1.1\r\nHost: pgdecomp\r\n\r\n".to_vec();
    // A startup packet that claims to be 1 GiB long.
    let mut huge_startup = 0x4000_0000u32.to_be_bytes().to_vec();
    huge_startup.extend_from_slice(&196_608u32.to_be_bytes());
    huge_startup.extend_from_slice(b"user\0gitlab\0");
    for (what, bytes) in [
        ("random bytes", noise),
        ("an HTTP request", http),
        ("a 1 GiB startup packet", huge_startup),
    ] {
        let mut raw = RawConn::connect(proxy.port()).await;
        raw.send(&bytes).await;
        let refusal = raw.expect_refusal(within).await;
        eprintln!("{what}: {refusal:?}");
    }

    // A logged-in client declaring a 1 GiB Query message.
    let mut raw = RawConn::login(proxy.port(), GITLAB.0, GITLAB.1, DATABASE).await;
    let mut huge_query = vec![b'Q'];
    huge_query.extend_from_slice(&0x4000_0000u32.to_be_bytes());
    huge_query.extend_from_slice(b"select 1");
    raw.send(&huge_query).await;
    let refusal = raw.expect_refusal(within).await;
    if let Refusal::Error { severity, .. } = &refusal {
        assert!(
            severity == "FATAL" || severity == "ERROR",
            "oversized message: {refusal:?}"
        );
    }

    bystander
        .simple_query("select 1")
        .await
        .expect("a client connected before keeps working");
    proxy
        .connect()
        .await
        .simple_query("select 1")
        .await
        .expect("new clients can still connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_transaction() {
    let topo = topology();
    let proxy = Proxy::with(topo, |c| c);
    let victim = proxy.connect().await;
    victim.batch_execute("begin").await.unwrap();
    victim
        .query_one("select count(*) from projects", &[])
        .await
        .unwrap();
    let pid: i32 = victim
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // PIDs are unique on this machine, so asking every server kills exactly that backend.
    let killed: usize = tokio::task::spawn_blocking(move || {
        topo.nodes()
            .iter()
            .map(|&n| topo.kill_backends(topo.port(n), Backend::Pid(pid)))
            .sum()
    })
    .await
    .unwrap();
    assert_eq!(killed, 1, "the server process of the open transaction");

    let err = tokio::time::timeout(
        Duration::from_secs(10),
        victim.query_one("select count(*) from projects", &[]),
    )
    .await
    .expect("the client hears about its dead server within 10 s")
    .expect_err("the transaction's server is gone");
    eprintln!("client saw: {err:?}");

    let client = proxy.connect().await;
    client
        .batch_execute("begin; select count(*) from projects; commit")
        .await
        .expect("the next transaction through the proxy works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_session_state() {
    let proxy = Proxy::with(topology(), |c| c.pool_mode("session").pool_size(2));
    let (out, _) = tokio::task::spawn_blocking({
        let port = proxy.port();
        move || {
            psql_through(
                port,
                "select 'session ' || count(*) from users;\n\\d users\n",
            )
        }
    })
    .await
    .unwrap();
    assert!(out.contains("session 5"), "psql in session mode:\n{out}");
    assert!(out.contains("Table \"public.users\""), "\\d users:\n{out}");

    let client: Client = proxy.connect().await;
    client
        .batch_execute("set statement_timeout = '123s'")
        .await
        .unwrap();
    for _ in 0..2 {
        let rows = client
            .simple_query("begin; select count(*) from projects; show statement_timeout; commit")
            .await
            .unwrap();
        let shown: Vec<&str> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
                _ => None,
            })
            .collect();
        assert_eq!(shown, ["5", "123s"], "SET must survive across transactions");
    }
    let row = client
        .query_one("show statement_timeout", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "123s", "and outside transactions");
}
