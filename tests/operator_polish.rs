//! What an operator sees before and after the first violation (issue 14, item 5): every
//! violation counter is exported at 0 from start, SHOW VIOLATIONS gives readable times, and a log
//! written to a file carries no terminal escape codes. And KILL of one client, mid-transaction.

mod common;

use common::cluster::{run_bounded, wait_until, Kind, Topology, BOUND};
use common::proxy::{Proxy, ADMIN};
use common::scrape::metrics;
use std::process::Command;

/// Runs `sql` on the admin console; its rows as `|`-separated lines.
fn admin(proxy: &Proxy, sql: &str) -> String {
    let out = run_bounded(
        Command::new("psql")
            .args([
                "-X",
                "-At",
                "-F",
                "|",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .arg(proxy.port().to_string())
            .args(["-U", ADMIN.0, "-d", "pgdecomp", "-c", sql])
            .env("PGPASSWORD", ADMIN.1),
        "",
        BOUND,
    );
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The sample lines of `text` for `name` whose labels are exactly `labels`, with their values.
fn sample(text: &str, name: &str, labels: &str) -> Option<String> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violation_counters_start_at_zero_and_violations_show_readable_times() {
    let topo = Topology::shared(Kind::MainOnly);
    let proxy = Proxy::with(topo, |c| c.phase(1));
    let fresh = metrics(&proxy);
    for (name, labels) in [
        (
            "pgdecomp_cross_join_total",
            r#"gitlab_schemas="gitlab_ci,gitlab_main""#,
        ),
        (
            "pgdecomp_cross_database_modification_total",
            r#"gitlab_schemas="gitlab_ci,gitlab_main""#,
        ),
        (
            "pgdecomp_wrong_schema_total",
            r#"db_config_name="main_replica",gitlab_schemas="gitlab_ci""#,
        ),
        (
            "pgdecomp_wrong_schema_total",
            r#"db_config_name="ci",gitlab_schemas="gitlab_main""#,
        ),
        (
            "pgdecomp_locked_table_write_total",
            r#"db_config_name="ci",gitlab_schema="gitlab_main""#,
        ),
        (
            "pgdecomp_locked_table_write_total",
            r#"db_config_name="main",gitlab_schema="gitlab_ci""#,
        ),
        ("pgdecomp_rejected_statements_total", r#"kind="cross_join""#),
        (
            "pgdecomp_shadow_violations_total",
            r#"kind="locked_table_write",mode="enforce""#,
        ),
    ] {
        assert_eq!(
            sample(&fresh, name, labels).as_deref(),
            Some("0"),
            "{name}{{{labels}}} at 0 on a fresh proxy:\n{fresh}"
        );
    }

    let client = proxy.connect().await;
    client
        .simple_query("SELECT 1 FROM projects JOIN ci_builds ON ci_builds.id = projects.id")
        .await
        .expect("observed, not refused, in phase 1");
    let after = metrics(&proxy);
    assert_eq!(
        sample(
            &after,
            "pgdecomp_cross_join_total",
            r#"gitlab_schemas="gitlab_ci,gitlab_main""#
        )
        .as_deref(),
        Some("1"),
        "{after}"
    );

    let shown = admin(&proxy, "SHOW VIOLATIONS");
    let at = shown
        .lines()
        .next()
        .and_then(|l| l.split('|').next())
        .unwrap_or("");
    let iso = at.len() == 20
        && at.as_bytes().iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(iso, "SHOW VIOLATIONS time as ISO 8601: {shown:?}");
    assert!(at.starts_with("20"), "{shown}");

    let log = proxy.log();
    assert!(log.contains("cross"), "the violation is logged: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "a log file has no escape codes: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_one_client_mid_transaction_and_disturbs_no_other() {
    let topo = Topology::shared(Kind::MainOnly);
    let proxy = Proxy::with(topo, |c| c.phase(1).pool_size(4));
    let idle = proxy.connect().await;
    idle.simple_query("SELECT 1").await.expect("idle client");
    let victim = proxy.connect().await;
    victim
        .batch_execute("BEGIN; UPDATE projects SET name = name WHERE id = 1")
        .await
        .expect("a transaction holding a row lock");
    let active: Vec<String> = admin(&proxy, "SHOW CLIENTS")
        .lines()
        .filter(|l| l.split('|').nth(3) == Some("active"))
        .filter_map(|l| l.split('|').next().map(str::to_string))
        .collect();
    assert_eq!(active.len(), 1, "one client holds a server");
    admin(&proxy, &format!("KILL {}", active[0]));

    let err = victim
        .simple_query("SELECT 1")
        .await
        .expect_err("a killed client's session is over");
    let code = err.as_db_error().map(|e| e.code().code().to_string());
    assert!(
        code.as_deref() == Some("57P01") || err.is_closed(),
        "terminated by the administrator: {err:?}"
    );
    wait_until("the killed client to leave SHOW CLIENTS", || {
        !admin(&proxy, "SHOW CLIENTS")
            .lines()
            .any(|l| l.split('|').next() == Some(active[0].as_str()))
    });
    // Its server connection was closed mid-transaction, so the row lock went with it, and the
    // other client goes on as before.
    let other = proxy.connect().await;
    other
        .batch_execute(
            "SET statement_timeout = '10s'; UPDATE projects SET name = name WHERE id = 1",
        )
        .await
        .expect("the killed transaction's lock is released");
    idle.simple_query("SELECT 1")
        .await
        .expect("the idle client is untouched");
}
