//! Per-request timers (issue 13, in part): `query_timeout` cancels a request on the server and
//! answers 57014 while the client stays connected; `idle_transaction_timeout` closes a client
//! idle inside a transaction with 25P03 and nothing of that transaction is committed. Each is
//! counted exactly, and checked on the server.

mod common;

use common::cluster::{wait_until, Kind, Topology, DATABASE};
use common::proxy::Proxy;
use common::scrape::{metric, metrics};
use std::time::{Duration, Instant};

fn topology() -> &'static Topology {
    Topology::shared(Kind::MainOnly)
}

fn token(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

fn limit_count(proxy: &Proxy, limit: &str) -> f64 {
    metric(
        &metrics(proxy),
        "pgdecomp_client_limit_total",
        &[("limit", limit)],
    )
}

/// Rows of `projects` named `name` on the main primary.
fn rows_named(name: &str) -> String {
    let topo = topology();
    topo.psql(
        topo.main_primary(),
        DATABASE,
        &format!("select count(*) from projects where name = '{name}'"),
    )
    .trim()
    .to_string()
}

/// Backends on the main primary running `pg_sleep` (the statement the timeout cancelled).
fn sleeping_backends() -> String {
    let topo = topology();
    let sql = "select count(*) from pg_stat_activity where query like 'select pg_sleep%' \
               and state = 'active' and pid <> pg_backend_pid()";
    topo.psql(topo.main_primary(), DATABASE, sql)
        .trim()
        .to_string()
}

fn code_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_on_the_server_and_keeps_the_client() {
    let proxy = Proxy::with(topology(), |c| c.extra_pool("query_timeout = 1.0"));
    let client = proxy.connect().await;
    let started = Instant::now();
    let err = client
        .simple_query("select pg_sleep(60)")
        .await
        .expect_err("cancelled");
    assert_eq!(code_of(&err), "57014", "{err:?}");
    assert!(
        err.to_string().contains("query_timeout") || format!("{err:?}").contains("query_timeout")
    );
    eprintln!("simple query cancelled after {:?}", started.elapsed());
    wait_until("the server stops running the cancelled statement", || {
        sleeping_backends() == "0"
    });
    // Extended protocol, inside a transaction: the transaction is aborted, its row never lands.
    let name = token("query-timeout");
    client.batch_execute("begin").await.expect("begin");
    client
        .execute("insert into projects (name) values ($1)", &[&name])
        .await
        .expect("insert");
    let err = client
        .query("select pg_sleep($1)", &[&60.0f64])
        .await
        .expect_err("cancelled");
    assert_eq!(code_of(&err), "57014", "{err:?}");
    let rows = client
        .simple_query("select 1")
        .await
        .expect("still connected");
    let answered = rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1")));
    assert!(answered, "{rows:?}");
    assert_eq!(rows_named(&name), "0", "the aborted transaction's row");
    // A request that answers in time is not touched, however long the session.
    for _ in 0..3 {
        client
            .simple_query("select pg_sleep(0.4)")
            .await
            .expect("in time");
    }
    assert_eq!(limit_count(&proxy, "query_timeout"), 2.0);
    wait_until("no cancelled statement left running", || {
        sleeping_backends() == "0"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_closes_the_client_and_commits_nothing() {
    let proxy = Proxy::with(topology(), |c| {
        c.extra_pool("idle_transaction_timeout = 1.0")
    });
    // BEGIN alone is held by pgdecomp (no server yet): the limit applies there too.
    let held = proxy.connect().await;
    held.batch_execute("begin").await.expect("begin");
    // Attached: a write waits on the server inside the transaction.
    let name = token("idle-transaction");
    let attached = proxy.connect().await;
    attached.batch_execute("begin").await.expect("begin");
    attached
        .execute("insert into projects (name) values ($1)", &[&name])
        .await
        .expect("insert");
    // A transaction that keeps working is never idle long enough.
    let busy = proxy.connect().await;
    busy.batch_execute("begin").await.expect("begin");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        busy.simple_query("select 1")
            .await
            .expect("a busy transaction");
    }
    busy.batch_execute("commit").await.expect("commit");
    for client in [&held, &attached] {
        let err = client.simple_query("select 1").await.expect_err("closed");
        let code = code_of(&err);
        assert!(code == "25P03" || err.is_closed(), "{err:?}");
    }
    assert_eq!(rows_named(&name), "0", "nothing of the idle transaction");
    assert_eq!(limit_count(&proxy, "idle_transaction_timeout"), 2.0);
    let topo = topology();
    wait_until("the idle transaction's server connection is gone", || {
        let sql = "select count(*) from pg_stat_activity where state like 'idle in transaction%'";
        topo.psql(topo.main_primary(), DATABASE, sql).trim() == "0"
    });
}

/// A client that sent nothing for a while gives back its busy period's state (after one to
/// two seconds): its held BEGIN, its prepared statement and its transaction carry over, and
/// client_idle_timeout still counts from the start of the wait, not from that hand-back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resting_between_requests_keeps_its_state_and_its_idle_limit() {
    let proxy = Proxy::with(topology(), |c| c.extra_pool("client_idle_timeout = 1.5"));
    let client = proxy.connect().await;
    let insert = client
        .prepare("insert into projects (name) values ($1)")
        .await
        .expect("prepare");
    let name = token("resting");
    client.batch_execute("begin").await.expect("begin");
    // Inside a transaction client_idle_timeout does not apply; the busy period ends anyway.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.execute(&insert, &[&name]).await.expect("insert");
    client.batch_execute("commit").await.expect("commit");
    assert_eq!(rows_named(&name), "1", "committed on the main primary");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    client
        .execute(&insert, &[&name])
        .await
        .expect("the prepared statement after a rest shorter than the limit");
    assert_eq!(rows_named(&name), "2");
    // Idle past the limit: closed 1.5 s into the wait. Had the hand-back at the second lull
    // restarted the count, the client would still be open at 2.4 s.
    let idle_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(2400)).await;
    let err = client
        .simple_query("select 1")
        .await
        .expect_err("closed by client_idle_timeout");
    assert!(
        code_of(&err) == "57P05" || err.is_closed(),
        "{err:?} after {:?}",
        idle_from.elapsed()
    );
    assert_eq!(limit_count(&proxy, "client_idle_timeout"), 1.0);
}
