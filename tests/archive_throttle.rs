//! The WAL-archive throttle (issue 14, item 3) on a real primary whose archive_command fails:
//! the health check reads the backlog of `.ready` segments, a client named like a migration
//! worker is held before it gets a server while another client runs normally, and once
//! archiving recovers the held transaction runs on the primary. A second proxy with a short
//! `throttle.max_hold` shows the refusal.

mod common;

use common::cluster::{wait_until, Kind, Node, Topology, BOUND, DATABASE};
use common::proxy::{Proxy, ProxyConfig};
use common::scrape::{metric, metrics};
use tokio_postgres::error::SqlState;

const WORKER: &str = "gitlab-migration-worker";
const READY_SQL: &str = "select count(*) from pg_ls_archive_statusdir() where name like '%.ready'";

fn throttle(max_hold: f64) -> String {
    format!(
        "[throttle]\narchive_ready_threshold = 2\napplication_names = [\"gitlab-migration-*\"]\n\
         max_hold = {max_hold:?}"
    )
}

fn proxy(topo: &Topology, max_hold: f64) -> Proxy {
    Proxy::with(topo, |c: ProxyConfig| {
        c.phase(1)
            .health("interval = 0.2\nstatement_timeout = 1.0\nread_your_writes = false")
            .extra(&throttle(max_hold))
    })
}

fn value(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&metrics(proxy), name, labels)
}

/// A main primary that archives with a failing command, and at least `segments` completed
/// WAL segments waiting for it; returns the count, which stays put until archiving recovers.
fn lagging_primary(segments: usize) -> (Topology, f64) {
    let topo = Topology::start(Kind::MainOnly);
    let port = topo.main_primary();
    // archive_mode needs a restart; archive_command only a reload.
    topo.psql(port, "postgres", "alter system set archive_mode = on");
    topo.psql(
        port,
        "postgres",
        "alter system set archive_command = 'false'",
    );
    topo.stop(Node::MainPrimary);
    topo.start_node(Node::MainPrimary);
    topo.psql(port, DATABASE, "create table archive_filler (x int)");
    for _ in 0..segments {
        // A write, so each switch completes a segment of its own.
        topo.psql(port, DATABASE, "insert into archive_filler values (1)");
        topo.psql(port, "postgres", "select pg_switch_wal()");
    }
    let ready = || -> usize {
        let count = topo.psql(port, "postgres", READY_SQL);
        count.parse().expect("a count")
    };
    wait_until("the failing archiver to leave the segments ready", || {
        ready() >= segments
    });
    let count = ready() as f64;
    (topo, count)
}

/// The backlog series of `server`, when pgdecomp exports it (absent means unknown).
fn backlog(proxy: &Proxy, server: &str) -> Option<f64> {
    let series =
        format!("pgdecomp_wal_archive_ready_segments{{cluster=\"main\",server=\"{server}\"}} ");
    metrics(proxy)
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_worker_waits_while_wal_archiving_lags() {
    let (topo, ready) = lagging_primary(3);
    let port = topo.main_primary();
    let server = format!("127.0.0.1:{port}");

    // Refusal first, on a proxy that holds for at most 0.3 s: the worker gets 53000 and
    // nothing ran.
    {
        let short = proxy(&topo, 0.3);
        wait_until("the backlog in /metrics", || {
            backlog(&short, &server) == Some(ready)
        });
        let mut config = short.app_config();
        config.application_name(WORKER);
        let worker = short.connect_with(&config).await;
        let err = worker
            .simple_query("insert into projects (name) values ('refused-by-throttle')")
            .await
            .expect_err("a held transaction is refused after throttle.max_hold");
        let db = err.as_db_error().expect("a server-style error");
        assert_eq!(db.code(), &SqlState::INSUFFICIENT_RESOURCES, "{db:?}");
        assert!(
            db.message().contains("throttle.max_hold"),
            "{}",
            db.message()
        );
        let text = metrics(&short);
        assert_eq!(metric(&text, "pgdecomp_throttle_held_total", &[]), 1.0);
        assert_eq!(metric(&text, "pgdecomp_throttle_refused_total", &[]), 1.0);
        assert_eq!(metric(&text, "pgdecomp_throttle_waiting", &[]), 0.0);
        assert_eq!(
            metric(&text, "pgdecomp_throttle_hold_seconds_count", &[]),
            1.0
        );
    }
    let refused = "select count(*) from projects where name = 'refused-by-throttle'";
    assert_eq!(topo.psql(port, DATABASE, refused), "0");

    let proxy = proxy(&topo, 120.0);
    wait_until("the backlog in /metrics", || {
        backlog(&proxy, &server) == Some(ready)
    });
    let mut config = proxy.app_config();
    config.application_name(WORKER);
    let worker = proxy.connect_with(&config).await;
    let held = tokio::spawn(async move {
        worker
            .simple_query("insert into projects (name) values ('held-by-throttle')")
            .await
            .map(|_| ())
    });
    wait_until("the worker's transaction to be held", || {
        value(&proxy, "pgdecomp_throttle_waiting", &[]) == 1.0
    });

    // Everyone else is unaffected: a write and a read of another client go through.
    let web = proxy.connect().await;
    tokio::time::timeout(BOUND, async {
        web.simple_query("insert into projects (name) values ('not-throttled')")
            .await
            .expect("another client writes while the worker is held");
        web.simple_query("select count(*) from projects")
            .await
            .expect("and reads");
    })
    .await
    .expect("the other client is not held");
    assert!(
        !held.is_finished(),
        "the worker's insert must still be held"
    );
    let landed = "select count(*) from projects where name = 'held-by-throttle'";
    assert_eq!(topo.psql(port, DATABASE, landed), "0");
    let text = metrics(&proxy);
    assert_eq!(metric(&text, "pgdecomp_throttle_held_total", &[]), 1.0);
    assert_eq!(
        metric(&text, "pgdecomp_throttle_hold_seconds_count", &[]),
        0.0
    );

    // Archiving recovers: the backlog drains, the worker proceeds and its row is on the primary.
    topo.psql(
        port,
        "postgres",
        "alter system set archive_command = 'true'",
    );
    topo.psql(port, "postgres", "select pg_reload_conf()");
    tokio::time::timeout(BOUND, held)
        .await
        .expect("the held transaction is released once archiving recovers")
        .expect("the worker task")
        .expect("the held insert succeeds");
    assert_eq!(topo.psql(port, DATABASE, landed), "1");
    let text = metrics(&proxy);
    assert_eq!(metric(&text, "pgdecomp_throttle_held_total", &[]), 1.0);
    assert_eq!(metric(&text, "pgdecomp_throttle_waiting", &[]), 0.0);
    assert_eq!(
        metric(&text, "pgdecomp_throttle_hold_seconds_count", &[]),
        1.0
    );
    assert_eq!(metric(&text, "pgdecomp_throttle_refused_total", &[]), 0.0);
    wait_until("the backlog to drain in /metrics", || {
        backlog(&proxy, &server) == Some(0.0)
    });
    let log = proxy.log();
    assert_eq!(
        log.matches("transaction held: WAL archiving lags").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("held transaction released").count(), 1, "{log}");
}
