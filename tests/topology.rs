//! Health checks and read-your-writes on real servers (static host lists, no Patroni): a
//! replica whose WAL replay is paused leaves the read rotation and comes back; a client always
//! reads its own writes while replicas lag, and can opt out or pass a WAL position.
//!
//! Each test pauses replay on its own topology, so they cannot disturb each other.

mod common;

use common::cluster::{wait_until, Kind, Topology, DATABASE};
use common::proxy::{Proxy, ProxyConfig};
use common::scrape::{metric, metrics};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, SimpleQueryMessage};

/// A read of a gitlab_main table: phase 1 sends it to a main replica.
const MAIN_READ: &str = "select inet_server_port() from projects limit 1";

fn health(interval: f64, max_lag_bytes: u64, max_lag_seconds: f64) -> String {
    format!(
        "interval = {interval}\nstatement_timeout = 1.0\nmax_lag_bytes = {max_lag_bytes}\n\
         max_lag_seconds = {max_lag_seconds}\nprimary_wait = 5.0\nread_your_writes_timeout = 60.0"
    )
}

/// Another pgdecomp instance in front of the same servers, as behind a load balancer.
fn proxy_for_same_servers(topo: &Topology) -> Proxy {
    proxy(topo, &health(0.5, u64::MAX / 2, 1e9))
}

fn proxy(topo: &Topology, health_toml: &str) -> Proxy {
    Proxy::with(topo, |c: ProxyConfig| c.phase(1).health(health_toml))
}

async fn port(client: &Client, sql: &str) -> u16 {
    let rows = client.simple_query(sql).await.expect(sql);
    for m in rows {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).expect("a value").parse().expect("a port");
        }
    }
    panic!("no row from {sql}");
}

fn in_rotation(proxy: &Proxy, port: u16) -> f64 {
    metric(
        &metrics(proxy),
        "pgdecomp_server_in_rotation",
        &[("server", &format!("127.0.0.1:{port}"))],
    )
}

/// Writes on the primary directly, so the paused replica falls behind.
fn write_on_primary(topo: &Topology) {
    topo.psql(
        topo.main_primary(),
        DATABASE,
        "create table if not exists lag_filler (x int); insert into lag_filler select generate_series(1, 100)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_leaves_the_rotation_and_comes_back() {
    let topo = Topology::start(Kind::Full);
    let interval = 1.0;
    // Any byte of lag for any time counts: pausing replay and writing is enough.
    let proxy = proxy(&topo, &health(interval, 0, 0.0));
    let (primary, replica) = (topo.main_primary(), topo.main_replica());
    let client = proxy.connect().await;
    wait_until("the replica to be checked and in rotation", || {
        in_rotation(&proxy, replica) == 1.0
    });
    assert_eq!(port(&client, MAIN_READ).await, replica);

    topo.psql(replica, "postgres", "select pg_wal_replay_pause()");
    write_on_primary(&topo);
    let behind = Instant::now();
    let mut out_after = None;
    while behind.elapsed() < Duration::from_secs(15) {
        if in_rotation(&proxy, replica) == 0.0 {
            out_after = Some(behind.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out_after = out_after.expect("the paused replica left the rotation");
    eprintln!("paused replica left the rotation {out_after:?} after it fell behind");
    // A round takes at most the interval plus the statement timeout; two rounds is the bound.
    assert!(
        out_after <= Duration::from_secs_f64(2.0 * (interval + 1.0)),
        "left the rotation only after {out_after:?}"
    );
    let text = metrics(&proxy);
    let server = format!("127.0.0.1:{replica}");
    assert!(metric(&text, "pgdecomp_server_lag_bytes", &[("server", &server)]) > 0.0);
    assert!(
        metric(
            &text,
            "pgdecomp_server_state_changes_total",
            &[("server", &server), ("state", "lagging")]
        ) >= 1.0
    );
    for _ in 0..20 {
        assert_eq!(
            port(&client, MAIN_READ).await,
            primary,
            "reads avoid the lagging replica"
        );
    }
    let fallback = metric(
        &metrics(&proxy),
        "pgdecomp_server_placements_total",
        &[("db_config_name", "main_replica"), ("via", "no_replica")],
    );
    assert!(fallback >= 20.0, "fallbacks counted: {fallback}");

    topo.psql(replica, "postgres", "select pg_wal_replay_resume()");
    wait_until("the caught-up replica to rejoin the rotation", || {
        in_rotation(&proxy, replica) == 1.0
    });
    for _ in 0..10 {
        assert_eq!(
            port(&client, MAIN_READ).await,
            replica,
            "reads are back on the replica"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_read_their_own_writes_while_replicas_lag() {
    let topo = Topology::start(Kind::Full);
    // Lag never takes the replica out here: read-your-writes alone must keep reads correct.
    let proxy = proxy(&topo, &health(0.5, u64::MAX / 2, 1e9));
    let (primary, replica) = (topo.main_primary(), topo.main_replica());
    let writer = proxy.connect().await;
    let reader = proxy.connect().await;
    wait_until("the replica to be checked", || {
        in_rotation(&proxy, replica) == 1.0
    });
    topo.psql(replica, "postgres", "select pg_wal_replay_pause()");

    let insert = writer
        .prepare("insert into projects (name) values ($1) returning id")
        .await
        .expect("prepare insert");
    let select = writer
        .prepare("select name, inet_server_port() from projects where id = $1")
        .await
        .expect("prepare select");
    let mut on_primary = 0;
    for i in 0..1000 {
        let name = format!("ryw-{i}");
        let id: i64 = writer
            .query_one(&insert, &[&name])
            .await
            .expect("insert")
            .get(0);
        let rows = writer.query(&select, &[&id]).await.expect("select");
        assert_eq!(
            rows.len(),
            1,
            "iteration {i}: the client's own row {id} is visible"
        );
        assert_eq!(rows[0].get::<_, String>(0), name);
        if rows[0].get::<_, i32>(1) == i32::from(primary) {
            on_primary += 1;
        }
        if i % 100 == 0 {
            // A client that never writes keeps reading from the (lagging) replica.
            assert_eq!(
                port(&reader, MAIN_READ).await,
                replica,
                "the reader stays on the replica"
            );
        }
    }
    assert_eq!(
        on_primary, 1000,
        "with replay paused only the primary has the rows"
    );
    let text = metrics(&proxy);
    assert!(
        metric(
            &text,
            "pgdecomp_server_placements_total",
            &[
                ("db_config_name", "main_replica"),
                ("via", "read_your_writes")
            ]
        ) >= 1000.0
    );

    // The position to hand to another pgdecomp instance (GitLab kept it per user in Redis):
    // at or past the last write, so a second proxy's reads with it avoid the paused replica.
    let before = topo.psql(primary, "postgres", "select pg_current_wal_insert_lsn()");
    writer
        .query_one(&insert, &[&"handoff"])
        .await
        .expect("insert");
    let shown = writer
        .simple_query("SHOW pgdecomp.write_lsn")
        .await
        .expect("SHOW pgdecomp.write_lsn");
    let written = match &shown[1] {
        SimpleQueryMessage::Row(r) => r.get(0).expect("a position").to_string(),
        other => panic!("no row: {other:?}"),
    };
    let newer = topo.psql(
        primary,
        "postgres",
        &format!("select '{written}'::pg_lsn > '{before}'::pg_lsn"),
    );
    assert_eq!(
        newer, "t",
        "write_lsn {written} is past the position before the write {before}"
    );
    let second = proxy_for_same_servers(&topo);
    let elsewhere = second.connect().await;
    elsewhere
        .batch_execute(&format!("SET pgdecomp.min_lsn = '{written}'"))
        .await
        .expect("SET pgdecomp.min_lsn on a second proxy");
    let rows = elsewhere
        .query("select name from projects where name = 'handoff'", &[])
        .await
        .expect("read on the second proxy");
    assert_eq!(
        rows.len(),
        1,
        "the second proxy's read sees the first proxy's write"
    );

    // Opting out: the same pattern reads the stale replica.
    let optout = proxy.connect().await;
    optout
        .batch_execute("SET pgdecomp.read_your_writes = off")
        .await
        .expect("SET pgdecomp.read_your_writes");
    let shown = optout
        .simple_query("SHOW pgdecomp.read_your_writes")
        .await
        .expect("SHOW");
    assert!(matches!(&shown[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("off")));
    let id: i64 = optout
        .query_one(
            "insert into projects (name) values ('optout') returning id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    let rows = optout
        .query(
            "select inet_server_port() from projects where id = $1",
            &[&id],
        )
        .await
        .expect("select");
    assert!(
        rows.is_empty(),
        "opted out: the paused replica does not have the row yet"
    );

    // A position learned elsewhere: a client that never wrote through this proxy.
    let lsn = topo.psql(primary, "postgres", "select pg_current_wal_insert_lsn()");
    let other = proxy.connect().await;
    other
        .batch_execute(&format!("SET pgdecomp.min_lsn = '{lsn}'"))
        .await
        .expect("SET pgdecomp.min_lsn");
    assert_eq!(
        port(&other, MAIN_READ).await,
        primary,
        "the replica has not replayed {lsn}"
    );
    let err = other
        .batch_execute("SET pgdecomp.min_lsn = 'not-an-lsn'")
        .await
        .expect_err("a bad LSN is refused");
    assert_eq!(err.code().map(|c| c.code()), Some("22023"));
    other
        .batch_execute("RESET pgdecomp.min_lsn")
        .await
        .expect("RESET");
    assert_eq!(port(&other, MAIN_READ).await, replica);

    // Once the replica replays the writes, the writer's reads return to it.
    topo.psql(replica, "postgres", "select pg_wal_replay_resume()");
    let check = writer
        .prepare("select inet_server_port() from projects limit 1")
        .await
        .expect("prepare");
    let mut back = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) && !back {
        let p: i32 = writer.query_one(&check, &[]).await.expect("read").get(0);
        back = p == i32::from(replica);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "the writer reads from the replica again once it caught up"
    );
}
