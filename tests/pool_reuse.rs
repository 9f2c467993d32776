//! Pool reuse (issue 12): a connection released after a transaction waits in the pool's stash
//! in front of deadpool. These tests hold the stash to deadpool's rules, checked on the
//! server: it counts as idle, the next transaction runs on the same backend, a backend that
//! died or outlived server_lifetime while stashed is replaced without an error, and a client
//! waiting for a full pool is handed the released connection.

mod common;

use std::time::Duration;

use common::cluster::{wait_until, Kind, Topology, DATABASE};
use common::proxy::Proxy;
use common::scrape::{metric, metrics};
use tokio_postgres::SimpleQueryMessage;

fn topology() -> &'static Topology {
    Topology::shared(Kind::MainOnly)
}

async fn backend_pid(client: &tokio_postgres::Client) -> i64 {
    let rows = client
        .simple_query("select pg_backend_pid()")
        .await
        .expect("pg_backend_pid through the proxy");
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .expect("a row")
}

/// Whether backend `pid` is still connected to the main primary.
fn backend_alive(pid: i64) -> bool {
    let topo = topology();
    let sql = format!("select count(*) from pg_stat_activity where pid = {pid}");
    topo.psql(topo.main_primary(), DATABASE, &sql).trim() == "1"
}

/// Connections in `state` (idle or active) of the pool that serves reads outside a
/// transaction: the main_replica target, on the primary's host as no replica is listed.
fn read_pool_servers(proxy: &Proxy, state: &str) -> f64 {
    let server = format!("127.0.0.1:{}", topology().main_primary());
    metric(
        &metrics(proxy),
        "pgdecomp_pool_servers",
        &[
            ("db_config_name", "main_replica"),
            ("server", &server),
            ("state", state),
        ],
    )
}

/// The backend of a transaction that runs only `select pg_backend_pid()`: a transaction runs
/// on the primary's own pool (the main target).
async fn transaction_pid(client: &tokio_postgres::Client) -> i64 {
    client.simple_query("begin").await.expect("begin");
    let pid = backend_pid(client).await;
    client.simple_query("commit").await.expect("commit");
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_connection_counts_idle_and_serves_the_next_transaction() {
    let proxy = Proxy::with(topology(), |c| c);
    let client = proxy.connect().await;
    let first = backend_pid(&client).await;
    let again = backend_pid(&client).await;
    assert_eq!(
        first, again,
        "the next transaction reuses the released backend"
    );
    assert_eq!(read_pool_servers(&proxy, "idle"), 1.0);
    assert_eq!(read_pool_servers(&proxy, "active"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_died_while_pooled_is_replaced_without_an_error() {
    let proxy = Proxy::with(topology(), |c| c);
    let client = proxy.connect().await;
    let first = backend_pid(&client).await;
    let topo = topology();
    let killed = topo.psql(
        topo.main_primary(),
        DATABASE,
        &format!("select pg_terminate_backend({first})"),
    );
    assert_eq!(killed.trim(), "t");
    wait_until("the terminated backend to leave", || !backend_alive(first));
    let next = backend_pid(&client).await;
    assert_ne!(next, first, "a new backend serves the next transaction");
    assert!(backend_alive(next));
    assert_eq!(
        read_pool_servers(&proxy, "idle"),
        1.0,
        "the dead one is gone"
    );
}

/// Four rounds shorter than the maintenance pass's second: in some of them no pass empties the
/// stash into deadpool (whose recycle would catch the expiry), so the stash's own check must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_server_lifetime_is_closed_rather_than_reused() {
    let proxy = Proxy::with(topology(), |mut c| {
        c.pool.server_lifetime = 0.3;
        c
    });
    let client = proxy.connect().await;
    for round in 0..4 {
        let first = backend_pid(&client).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let next = backend_pid(&client).await;
        assert_ne!(
            next, first,
            "round {round}: the expired connection is not reused"
        );
        wait_until("the expired backend to be closed", || !backend_alive(first));
    }
}

/// With one connection and a second client waiting for it, each release must wake the waiter:
/// a connection kept in the stash instead would leave it waiting into query_wait_timeout
/// (53300). Five hand-overs, so a maintenance pass that happens to free the stash in time
/// cannot hide a missed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_a_full_pool_gets_the_released_connection() {
    let proxy = Proxy::with(topology(), |c| c.pool_size(1).query_wait_timeout(0.6));
    let holder = proxy.connect().await;
    let mut waiter = proxy.connect().await;
    for round in 0..5 {
        holder.simple_query("begin").await.expect("begin");
        let held = backend_pid(&holder).await;
        let waiting = tokio::spawn(async move {
            let pid = transaction_pid(&waiter).await;
            (waiter, pid)
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        holder.simple_query("commit").await.expect("commit");
        let (back, pid) = waiting.await.expect("the waiting client's task");
        assert_eq!(
            pid, held,
            "round {round}: the one connection was handed over"
        );
        waiter = back;
        // The waiter's release went to the stash; the holder takes it from there.
        assert_eq!(transaction_pid(&holder).await, held);
    }
}
