//! SCRAM passthrough (issue 13, in part): with only the servers' own SCRAM verifiers in the
//! auth file (as copied from pg_authid) and no `[server]` password, pgdecomp logs in to SCRAM
//! servers with the keys each client proved at its own login. psql, pgbench and tokio-postgres
//! log in and run; a wrong password still fails with 28P01.

mod common;

use common::cluster::{run_bounded, wait_until, Kind, Topology, BOUND, DATABASE};
use common::proxy::{connect, Proxy, ProxyConfig, ADMIN, GITLAB};
use common::scrape::{metric, metrics};
use std::process::Command;

/// A proxy whose auth file holds gitlab's verifier exactly as the server stores it.
fn passthrough_proxy(topo: &Topology) -> Proxy {
    let proxy = Proxy::start(&ProxyConfig::new(topo).server(None).build());
    let verifier = topo.psql(
        topo.main_primary(),
        "postgres",
        "select rolpassword from pg_authid where rolname = 'gitlab'",
    );
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    std::fs::write(
        proxy.dir().join("userlist.txt"),
        format!(
            "\"{}\" \"{verifier}\"\n\"{}\" \"{}\"\n",
            GITLAB.0, ADMIN.0, ADMIN.1
        ),
    )
    .expect("write auth file");
    proxy.reload();
    wait_until("the auth file is reloaded", || {
        metric(
            &metrics(&proxy),
            "pgdecomp_config_reload_total",
            &[("result", "ok")],
        ) == 1.0
    });
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_log_in_to_scram_servers_with_the_keys_their_login_proved() {
    let topo = Topology::shared(Kind::MainOnly);
    let proxy = passthrough_proxy(topo);
    let port = i32::from(topo.main_primary());

    let client = connect(&proxy.app_config())
        .await
        .expect("tokio-postgres logs in");
    let row = client
        .query_one("select inet_server_port(), current_user::text", &[])
        .await
        .expect("runs on the server");
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (port, GITLAB.0.to_string())
    );

    let dsn = format!(
        "host=127.0.0.1 port={} user={} dbname={DATABASE}",
        proxy.port(),
        GITLAB.0
    );
    let out = run_bounded(
        Command::new("psql")
            .args([
                "-X",
                "-At",
                "-d",
                &dsn,
                "-c",
                "select count(*) from projects",
            ])
            .env("PGPASSWORD", GITLAB.1),
        "",
        BOUND,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");

    let script = topo.temp_dir().join("read.sql");
    std::fs::write(&script, "select count(*) from projects;\n").expect("write script");
    let out = run_bounded(
        Command::new("pgbench")
            .args([
                "-n",
                "-c",
                "4",
                "-j",
                "2",
                "-t",
                "50",
                "-C",
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .arg(proxy.port().to_string())
            .args(["-U", GITLAB.0, "-f"])
            .arg(&script)
            .arg(DATABASE)
            .env("PGPASSWORD", GITLAB.1),
        "",
        BOUND,
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("number of transactions actually processed: 200/200"),
        "{report}"
    );

    let Err(err) = connect(&proxy.config(GITLAB.0, "wrong", DATABASE)).await else {
        panic!("a wrong password fails");
    };
    let code = err.as_db_error().map(|e| e.code().code().to_string());
    assert_eq!(code.as_deref(), Some("28P01"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_the_server_does_not_hold_cannot_log_in_to_it() {
    // The harness's auth file derives its own verifier (another salt): the client's login to
    // pgdecomp succeeds, the server refuses the keys, and the client is told.
    let topo = Topology::shared(Kind::MainOnly);
    let proxy = Proxy::start(&ProxyConfig::new(topo).server(None).build());
    let Err(err) = connect(&proxy.app_config()).await else {
        panic!("the server refuses keys of another verifier");
    };
    let text = format!("{err:?}");
    assert!(
        err.as_db_error().is_some(),
        "an ErrorResponse, not a dropped connection: {text}"
    );
}
