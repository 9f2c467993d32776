//! Functions with side effects against real servers (issue 14, item 4; the classify step of
//! client → framing → session → classify → route → pool → server): in phase 1, where reads go
//! to the main replica, every SELECT that calls a function which writes or needs a transaction
//! ID runs on the primary, over the simple and the extended protocol, while a SELECT calling
//! only STABLE/IMMUTABLE functions still reads from the replica. Where a statement ran is
//! proven by `inet_server_port()` or by success (a replica refuses writes).

mod common;

use common::cluster::{wait_until, Kind, Topology, DATABASE};
use common::proxy::{connect, Proxy};
use common::scrape::{metric, metrics};
use pgdecomp::classify::Functions;
use std::collections::HashSet;
use std::sync::OnceLock;
use tokio_postgres::{Client, SimpleQueryMessage};

/// One Full topology with a VOLATILE plpgsql function that inserts a row and returns it, and a
/// STABLE one; created once on the primary, replicated everywhere.
fn topology() -> &'static Topology {
    static TOPO: OnceLock<&'static Topology> = OnceLock::new();
    TOPO.get_or_init(|| {
        let topo = Topology::shared(Kind::Full);
        topo.psql_script(
            topo.main_primary(),
            DATABASE,
            "SET ROLE gitlab;
             CREATE TABLE fn_written (id bigserial PRIMARY KEY, tag text NOT NULL);
             CREATE FUNCTION func_that_writes(t text) RETURNS fn_written LANGUAGE plpgsql AS $$
               DECLARE r fn_written;
               BEGIN
                 INSERT INTO fn_written (tag) VALUES (t) RETURNING * INTO r;
                 RETURN r;
               END $$;
             CREATE FUNCTION stable_fn() RETURNS int LANGUAGE sql STABLE AS 'SELECT 42';
             RESET ROLE;",
        );
        topo.sync_replicas();
        topo
    })
}

/// pgdecomp in phase 1 once it has read the catalog (so it knows `stable_fn`).
fn start() -> Proxy {
    let proxy = Proxy::with(topology(), |c| c.phase(1));
    wait_until("the proxy reads the catalog", || {
        metric(
            &metrics(&proxy),
            "pgdecomp_catalog_reads_total",
            &[("result", "ok")],
        ) >= 1.0
    });
    proxy
}

async fn primary() -> Client {
    let topo = topology();
    connect(&topo.app_config(topo.main_primary()))
        .await
        .expect("connect to the main primary")
}

/// Rows `func_that_writes` left on the primary for `tag`.
async fn written(tag: &str) -> i64 {
    primary()
        .await
        .query_one("SELECT count(*) FROM fn_written WHERE tag = $1", &[&tag])
        .await
        .expect("count fn_written")
        .get(0)
}

/// Runs `sql` over the simple protocol and returns column `column` of its first row.
async fn simple(client: &Client, sql: &str, column: usize) -> String {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(column).unwrap_or_default().to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

fn port(text: &str) -> u16 {
    text.parse()
        .unwrap_or_else(|_| panic!("not a port: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_write_run_on_the_primary_over_the_simple_protocol() {
    let topo = topology();
    let proxy = start();
    let client = proxy.connect().await;
    let on_primary = |sql: &str| format!("SELECT inet_server_port(), {sql}");

    simple(&client, "SELECT func_that_writes('simple select list')", 0).await;
    assert_eq!(written("simple select list").await, 1);
    simple(&client, "SELECT * FROM func_that_writes('simple from')", 0).await;
    assert_eq!(written("simple from").await, 1);

    let oid = simple(&client, "SELECT lo_create(0)", 0).await;
    let oid: u32 = oid.parse().expect("lo_create returns an oid");
    let exists = format!("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = {oid}");
    assert_eq!(topo.psql(topo.main_primary(), DATABASE, &exists), "1");
    simple(&client, &format!("SELECT lo_unlink({oid})"), 0).await;
    assert_eq!(topo.psql(topo.main_primary(), DATABASE, &exists), "0");

    for call in [
        "txid_current()",
        "pg_current_xact_id()",
        "pg_notify('fn_channel', 'payload')",
        "set_config('pgdecomp_test.flag', 'on', false)",
    ] {
        let sql = on_primary(call);
        assert_eq!(
            port(&simple(&client, &sql, 0).await),
            topo.main_primary(),
            "{sql}"
        );
    }
    // A transaction-local setting ends with the statement: it may read from the replica.
    let local = on_primary("set_config('pgdecomp_test.flag', 'on', true)");
    assert_eq!(port(&simple(&client, &local, 0).await), topo.main_replica());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_write_run_on_the_primary_over_the_extended_protocol() {
    let topo = topology();
    let proxy = start();
    let client = proxy.connect().await;
    let primary_port = i32::from(topo.main_primary());

    for (sql, tag) in [
        ("SELECT (func_that_writes($1)).id", "extended select list"),
        ("SELECT id FROM func_that_writes($1)", "extended from"),
    ] {
        client
            .query_one(sql, &[&tag])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(written(tag).await, 1, "{sql}");
    }

    let row = client
        .query_one("SELECT lo_create($1), inet_server_port()", &[&0u32])
        .await
        .expect("lo_create");
    let oid: u32 = row.get(0);
    assert_eq!(row.get::<_, i32>(1), primary_port);
    client
        .query_one("SELECT lo_unlink($1)", &[&oid])
        .await
        .expect("lo_unlink");

    for (sql, value) in [
        (
            "SELECT inet_server_port(), txid_current()::text || $1::text",
            "",
        ),
        (
            "SELECT inet_server_port(), pg_current_xact_id()::text || $1::text",
            "",
        ),
        (
            "SELECT inet_server_port(), pg_notify('fn_channel', $1::text)::text",
            "payload",
        ),
        (
            "SELECT inet_server_port(), set_config('pgdecomp_test.flag', $1::text, false)",
            "on",
        ),
    ] {
        let row = client
            .query_one(sql, &[&value])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(row.get::<_, i32>(0), primary_port, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_and_immutable_calls_still_read_from_the_replica() {
    let topo = topology();
    let proxy = start();
    let client = proxy.connect().await;
    let sql = "SELECT inet_server_port(), stable_fn(), lower('X'), now()";
    assert_eq!(port(&simple(&client, sql, 0).await), topo.main_replica());
    let row = client
        .query_one(
            "SELECT inet_server_port(), stable_fn() + $1::int, lower($2::text), now()",
            &[&1i32, &"X"],
        )
        .await
        .expect("stable read");
    assert_eq!(row.get::<_, i32>(0), i32::from(topo.main_replica()));
    assert_eq!(row.get::<_, i32>(1), 43);
    assert_eq!(row.get::<_, String>(2), "x");
}

/// The built-in list pgdecomp trusts without a catalog holds only pg_catalog functions whose
/// every overload this PostgreSQL marks STABLE or IMMUTABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_safe_list_matches_pg_proc() {
    let rows = primary()
        .await
        .query(
            "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'pg_catalog' GROUP BY 1 HAVING max(p.provolatile::text) <> 'v'",
            &[],
        )
        .await
        .expect("read pg_proc");
    let safe: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let wrong: Vec<&str> = Functions::builtin_safe_names()
        .iter()
        .copied()
        .filter(|name| !safe.contains(*name))
        .collect();
    assert!(
        wrong.is_empty(),
        "not STABLE/IMMUTABLE in pg_proc: {wrong:?}"
    );
}
