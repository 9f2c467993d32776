//! The table dictionary against a real database (issue 14, items 1 and 2): the GitLab 15.6
//! dictionary, partitions learned from the main primary's catalog at start and on reload,
//! `pgdecomp dictionary check`, and undefined tables in the cross-database modification rule.
//! Where a statement ran is proven by `inet_server_port()`, counts by exact `/metrics` values.

mod common;

use common::cluster::{run_bounded, wait_until, Kind, Topology, BOUND, DATABASE};
use common::proxy::Proxy;
use common::scrape::{metric, metrics};
use std::process::Command;
use std::sync::OnceLock;
use tokio_postgres::Client;

const NEWER: &str = "[classify]\ndictionary = \"gitlab-15.6\"";

/// One Full topology with a partitioned CI table whose partition has a name no rule can map,
/// and a table no dictionary knows; created once, replicated everywhere.
fn topology() -> &'static Topology {
    static TOPO: OnceLock<&'static Topology> = OnceLock::new();
    TOPO.get_or_init(|| {
        let topo = Topology::shared(Kind::Full);
        topo.psql_script(
            topo.main_primary(),
            DATABASE,
            "SET ROLE gitlab;
             CREATE TABLE p_ci_builds (id bigint, partition_id bigint NOT NULL)
               PARTITION BY LIST (partition_id);
             CREATE TABLE oddly_named_builds PARTITION OF p_ci_builds FOR VALUES IN (100);
             INSERT INTO p_ci_builds VALUES (1, 100);
             CREATE TABLE decomp_unknown_widgets (id bigint);
             RESET ROLE;",
        );
        topo.sync_replicas();
        topo
    })
}

fn start(extra: &str) -> Proxy {
    let topo = topology();
    let proxy = Proxy::with(topo, |c| c.phase(4).extra(extra));
    wait_catalog_reads(&proxy, 1.0);
    proxy
}

fn wait_catalog_reads(proxy: &Proxy, at_least: f64) {
    wait_until("the proxy reads the catalog", || {
        metric(
            &metrics(proxy),
            "pgdecomp_catalog_reads_total",
            &[("result", "ok")],
        ) >= at_least
    });
}

async fn port_of(client: &Client, sql: &str) -> i32 {
    let row = client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get(0)
}

fn dictionary_check(proxy: &Proxy) -> (i32, String) {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_pgdecomp"))
            .args(["dictionary", "check", "--config"])
            .arg(proxy.config_path())
            .current_dir(proxy.dir()),
        "",
        BOUND,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

#[test]
fn dictionary_check_lists_what_the_dictionary_does_not_know() {
    let proxy = start(NEWER);
    let (code, report) = dictionary_check(&proxy);
    assert_eq!(code, 1, "unknown tables make it fail:\n{report}");
    assert!(
        report.contains("  public.decomp_unknown_widgets\n"),
        "{report}"
    );
    // The partitioned table is in the newer dictionary; its partition is learned from the catalog.
    assert!(!report.contains("public.p_ci_builds\n"), "{report}");
    assert!(!report.contains("public.oddly_named_builds"), "{report}");
    assert!(
        report.contains("  ci_runner_machine_builds\tgitlab_ci\n"),
        "{report}"
    );

    let old = start("");
    let (code, report) = dictionary_check(&old);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("  public.p_ci_builds\n"), "{report}");
    assert!(report.contains("dictionary gitlab-2022;"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_take_their_parents_schema_at_start_and_after_reload() {
    let topo = topology();
    let proxy = start(NEWER);
    let client = proxy.connect().await;
    let read = |table: &str| format!("SELECT inet_server_port(), (SELECT count(*) FROM {table})");
    // Phase 4: ci reads go to the CI standby's replica, main reads to the main replica.
    assert_eq!(
        port_of(&client, &read("p_ci_builds")).await,
        i32::from(topo.ci_replica())
    );
    assert_eq!(
        port_of(&client, &read("oddly_named_builds")).await,
        i32::from(topo.ci_replica())
    );
    assert_eq!(
        port_of(&client, &read("projects")).await,
        i32::from(topo.main_replica())
    );

    // A partition created after start is unknown (main) until a reload reads the catalog again.
    topo.psql_script(
        topo.main_primary(),
        DATABASE,
        "SET ROLE gitlab;
         CREATE TABLE later_builds_part PARTITION OF p_ci_builds FOR VALUES IN (101);
         RESET ROLE;",
    );
    topo.sync_replicas();
    // Unknown: a main server. Under load the health check may see the DDL's WAL as replica lag
    // for a moment and send the read to the main primary; either way it is not the CI side.
    let port = port_of(&client, &read("later_builds_part")).await;
    assert!(
        [topo.main_replica(), topo.main_primary()]
            .map(i32::from)
            .contains(&port),
        "an unknown table read on {port}"
    );
    proxy.reload();
    wait_catalog_reads(&proxy, 2.0);
    assert_eq!(
        port_of(&client, &read("later_builds_part")).await,
        i32::from(topo.ci_replica())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_writing_main_and_an_undefined_table_is_a_cross_database_modification() {
    let proxy = start(NEWER);
    let client = proxy.connect().await;
    let before = metrics(&proxy);
    let count = |text: &str| {
        metric(
            text,
            "pgdecomp_cross_database_modification_total",
            &[(
                "gitlab_schemas",
                "gitlab_main,undefined_decomp_unknown_widgets",
            )],
        )
    };
    client
        .batch_execute(
            "BEGIN;
             UPDATE projects SET name = name WHERE id = 1;
             INSERT INTO decomp_unknown_widgets VALUES (1);
             COMMIT;",
        )
        .await
        .expect("observe mode lets the transaction run");
    // Each on its own is no violation.
    client
        .batch_execute("BEGIN; INSERT INTO decomp_unknown_widgets VALUES (2); COMMIT;")
        .await
        .expect("insert");
    let after = metrics(&proxy);
    assert_eq!(count(&after) - count(&before), 1.0, "{after}");
}
