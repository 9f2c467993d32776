//! The pool's hand-off queue (issue 12): a client waiting for a full pool is handed the
//! connection another client lets go of, however it lets go, and is told to open a new one
//! when a connection leaves the pool. Each test has one server connection and a second client
//! waiting for it, counted by SHOW POOLS' gauge; a waiter left waiting would fail with
//! query_wait_timeout (53300). Backends are checked on the server.

mod common;

use common::cluster::{wait_until, Kind, Topology, DATABASE};
use common::proxy::Proxy;
use common::scrape::metrics;
use tokio_postgres::SimpleQueryMessage;

fn topology() -> &'static Topology {
    Topology::shared(Kind::MainOnly)
}

/// The backend of `sql`'s one row. Every test uses the main target's pool (a transaction, or a
/// statement inside one): a read outside a transaction would use another pool.
async fn pid_of(client: &tokio_postgres::Client, sql: &str) -> Result<i64, tokio_postgres::Error> {
    common::proxy::first_value(client, sql).await
}

/// A proxy with one server connection per pool, and a client holding it inside a transaction
/// (with its backend's pid).
async fn held_pool() -> (Proxy, tokio_postgres::Client, i64) {
    let proxy = Proxy::with(topology(), |c| c.pool_size(1).query_wait_timeout(20.0));
    let holder = proxy.connect().await;
    holder.simple_query("begin").await.expect("begin");
    let held = pid_of(&holder, IN_TRANSACTION)
        .await
        .expect("the holder's backend");
    (proxy, holder, held)
}

/// Clients waiting for a server connection, over every pool (`pgdecomp_pool_servers`).
fn waiting_clients(proxy: &Proxy) -> f64 {
    metrics(proxy)
        .lines()
        .filter(|l| {
            l.starts_with("pgdecomp_pool_servers{") && l.contains("state=\"waiting_clients\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const IN_TRANSACTION: &str = "select pg_backend_pid()";
const TRANSACTION: &str = "begin; select pg_backend_pid(); commit";

/// Starts a client's transaction and returns once the proxy counts it waiting and it is still
/// unanswered a moment later (a pool's first connection counts as waiting while it opens).
fn waiter(
    proxy: &Proxy,
    client: tokio_postgres::Client,
) -> tokio::task::JoinHandle<(tokio_postgres::Client, Result<i64, tokio_postgres::Error>)> {
    let waiting = tokio::spawn(async move {
        let pid = pid_of(&client, TRANSACTION).await;
        (client, pid)
    });
    wait_until("the second client to wait for the pool", || {
        waiting_clients(proxy) == 1.0
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !waiting.is_finished(),
        "the second client waits for the one connection"
    );
    waiting
}

/// The connection a client waits for is closed by the server mid-transaction: it leaves the
/// pool, and the waiter is told to open another rather than wait into query_wait_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_opens_a_connection_when_the_one_it_waits_for_is_closed() {
    // The holder stays connected: its server connection is closed under it.
    let (proxy, _holder, held) = held_pool().await;
    let waiting = waiter(&proxy, proxy.connect().await);
    let topo = topology();
    let sql = format!("select pg_terminate_backend({held})");
    assert_eq!(topo.psql(topo.main_primary(), DATABASE, &sql).trim(), "t");
    let (_waiter, pid) = waiting.await.expect("the waiting client's task");
    let pid = pid.expect("the waiter is served, not timed out");
    assert_ne!(pid, held, "a new backend serves the waiter");
    let sql = format!("select count(*) from pg_stat_activity where pid = {pid}");
    assert_eq!(topo.psql(topo.main_primary(), DATABASE, &sql).trim(), "1");
    assert_eq!(waiting_clients(&proxy), 0.0);
}

/// In session pooling a client holds its connection until it leaves; when it does, the
/// connection (cleaned with DISCARD ALL) goes to the waiter, not back to an idle list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_client_leaving_hands_its_connection_to_the_waiter() {
    let proxy = Proxy::with(topology(), |c| {
        c.pool_mode("session").pool_size(1).query_wait_timeout(20.0)
    });
    let holder = proxy.connect().await;
    let held = pid_of(&holder, TRANSACTION)
        .await
        .expect("the holder's backend");
    let waiting = waiter(&proxy, proxy.connect().await);
    drop(holder);
    let (waiter, pid) = waiting.await.expect("the waiting client's task");
    assert_eq!(
        pid.expect("the waiter is served, not timed out"),
        held,
        "the holder's connection was handed over"
    );
    assert_eq!(pid_of(&waiter, TRANSACTION).await.expect("again"), held);
}

/// A client that disconnects mid-transaction leaves its connection unusable: it is closed,
/// and the waiter opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_served_when_the_holder_disconnects_mid_transaction() {
    let (proxy, holder, held) = held_pool().await;
    let waiting = waiter(&proxy, proxy.connect().await);
    drop(holder);
    let (_waiter, pid) = waiting.await.expect("the waiting client's task");
    let pid = pid.expect("the waiter is served, not timed out");
    assert_ne!(pid, held, "the mid-transaction backend is not reused");
    assert_eq!(waiting_clients(&proxy), 0.0);
}

/// Clients waiting for a full pool are served in the order they came, as PgBouncer serves
/// them: the first waiter gets the released connection, the second the one it releases. The
/// order is read on the server (transaction ids), not from when the replies reach the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_arrival_order() {
    let (proxy, holder, held) = held_pool().await;
    let mut tasks = Vec::new();
    for i in 0..2 {
        let client = proxy.connect().await;
        tasks.push(tokio::spawn(async move {
            let sql = "begin; select txid_current(), pg_backend_pid(); commit";
            let rows = client
                .simple_query(sql)
                .await
                .expect("served, not timed out");
            let row = rows
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some((r.get(0)?.parse(), r.get(1)?.parse())),
                    _ => None,
                })
                .expect("a row");
            (client, row.0.expect("a txid"), row.1.expect("a pid"))
        }));
        wait_until("the client to wait for the pool", || {
            waiting_clients(&proxy) == f64::from(i + 1)
        });
    }
    holder.simple_query("commit").await.expect("commit");
    let mut served: Vec<(i64, i64)> = Vec::new();
    for task in tasks {
        let (_client, txid, pid) = task.await.expect("a waiter's task");
        served.push((txid, pid));
    }
    assert!(
        served[0].0 < served[1].0,
        "the first to wait ran first: {served:?}"
    );
    assert!(
        served.iter().all(|&(_, pid)| pid == held),
        "one connection, handed on: {served:?}"
    );
}

/// Sum and count of histogram `name`'s series whose labels include `labels`.
fn histogram(text: &str, name: &str, labels: &[(&str, &str)]) -> (f64, f64) {
    let sum = common::scrape::metric(text, &format!("{name}_sum"), labels);
    (
        sum,
        common::scrape::metric(text, &format!("{name}_count"), labels),
    )
}

/// The time histograms count each checkout, transaction and request once, and their times lie
/// inside what the test saw: a handed connection's wait lasts until the holder's commit, which
/// comes after the test's pause; the holder's transaction lasts at least as long. These times
/// come from readings the relay shares (the release, the last reply), not from their own
/// clock reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_connection_times_its_wait_and_its_transaction() {
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(300);
    let (proxy, holder, _held) = held_pool().await;
    let begun = std::time::Instant::now();
    let main = [("db_config_name", "main")];
    let before = metrics(&proxy);
    let client = proxy.connect().await;
    let wait_began = std::time::Instant::now();
    let waiting = waiter(&proxy, client);
    tokio::time::sleep(PAUSE).await;
    holder.simple_query("commit").await.expect("commit");
    let (_waiter, pid) = waiting.await.expect("the waiting client's task");
    pid.expect("the waiter is served");
    let (waited_at_most, held_at_most) = (wait_began.elapsed(), begun.elapsed());
    let after = metrics(&proxy);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        let (s0, c0) = histogram(&before, name, labels);
        let (s1, c1) = histogram(&after, name, labels);
        (s1 - s0, c1 - c0)
    };
    let (wait_sum, waits) = delta("pgdecomp_pool_wait_seconds", &[]);
    assert_eq!(waits, 1.0, "one checkout: the waiter's");
    let pause = PAUSE.as_secs_f64();
    let most = waited_at_most.as_secs_f64() + 0.05;
    assert!(
        (pause..most).contains(&wait_sum),
        "the waiter waited {wait_sum} s: at least the {pause} s pause, at most {most}"
    );
    let (txn_sum, txns) = delta("pgdecomp_transaction_duration_seconds", &main);
    assert_eq!(txns, 2.0, "the holder's transaction and the waiter's");
    let most = held_at_most.as_secs_f64() + waited_at_most.as_secs_f64();
    assert!(
        (pause..most).contains(&txn_sum),
        "transactions took {txn_sum} s in all: the holder's outlasted the pause, and both \
         fit in what the test saw ({most} s)"
    );
    let (request_sum, requests) = delta("pgdecomp_statement_duration_seconds", &main);
    assert_eq!(
        requests, 2.0,
        "the holder's commit and the waiter's one query string"
    );
    assert!(
        request_sum > 0.0 && request_sum < txn_sum,
        "requests took {request_sum} s, inside their transactions' {txn_sum} s"
    );
}
