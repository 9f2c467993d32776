//! Phase routing end to end: each shipped phase file, rollouts, and every violation kind, proven
//! against real PostgreSQL servers by `inet_server_port()` and the proxy's `/metrics`.

mod common;

use common::cluster::{wait_until, Kind, Node, Topology, BOUND};
use common::proxy::{Proxy, ProxyConfig, GITLAB};
use common::scrape::{metric, metrics};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Phases 1–6 share one topology: they never write on the CI standby, so they cannot disturb
/// each other.
fn topology() -> &'static Topology {
    Topology::shared(Kind::Full)
}

/// Phase 7 needs a promoted CI cluster, and promotion is irreversible, so phase-7 tests share
/// a second topology of their own.
fn promoted() -> &'static Topology {
    static PROMOTED: OnceLock<Topology> = OnceLock::new();
    PROMOTED.get_or_init(|| {
        let topo = Topology::start(Kind::Full);
        topo.promote_ci();
        topo
    })
}

fn shipped_phase(n: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("phases/phase-{n}.toml"))
}

/// Writes a copy of `phases/phase-N.toml` with `edit` applied into a fresh dir, together with
/// the phase-7 file its `shadow = "phase-7.toml"` (phases 4–6) names relative to itself.
fn phase_copy(topo: &Topology, n: u32, edit: impl FnOnce(String) -> String) -> PathBuf {
    let dir = topo.temp_dir();
    let text = std::fs::read_to_string(shipped_phase(n)).expect("read shipped phase file");
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit must change phase-{n}.toml");
    std::fs::copy(shipped_phase(7), dir.join("phase-7.toml")).expect("copy shadow phase");
    let path = dir.join(format!("phase-{n}-edited.toml"));
    std::fs::write(&path, edited).expect("write edited phase file");
    path
}

/// Every violation kind in `[violations]` set to `mode`.
fn violations(text: String, mode: &str) -> String {
    let mut out = String::new();
    let mut in_violations = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_violations = line == "[violations]";
        }
        match line.split_once(" = ") {
            Some((key, _)) if in_violations && !key.starts_with('#') => {
                out.push_str(&format!("{key} = \"{mode}\""));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Starts pgdecomp on `topo` with `phase_file` pointing at `path` (an edited phase copy).
/// `ProxyConfig::phase` only knows the shipped files, so the line is swapped in the text.
fn proxy_with_phase_file(topo: &Topology, path: &Path) -> Proxy {
    let config = ProxyConfig::new(topo).build();
    let shipped = format!("phase_file = \"{}\"", shipped_phase(1).display());
    assert!(
        config.contains(&shipped),
        "config layout changed:\n{config}"
    );
    let config = config.replace(&shipped, &format!("phase_file = \"{}\"", path.display()));
    Proxy::start(&config)
}

/// The first column of the first row of a simple query, as a port number.
async fn port_of(client: &Client, sql: &str) -> u16 {
    let rows = simple(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    first_port(&rows, sql)
}

fn first_port(rows: &[SimpleQueryMessage], sql: &str) -> u16 {
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().expect("port")),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// `simple_query` with a bounded wait, so a hung proxy fails the test instead of hanging it.
async fn simple(
    client: &Client,
    sql: &str,
) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
    tokio::time::timeout(BOUND, client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within {BOUND:?}"))
}

/// Runs `sql` expecting an error; returns (SQLSTATE, message).
async fn expect_error(client: &Client, sql: &str) -> (String, String) {
    match simple(client, sql).await {
        Ok(rows) => panic!("{sql}: expected an error, got {} messages", rows.len()),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: not a server error: {e:?}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

/// Waits until `name{labels}` on `proxy` reaches at least `at_least`; counters are bumped when
/// routing happens, but polling costs nothing and avoids relying on that ordering.
fn wait_metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)], at_least: f64) {
    let mut last = 0.0;
    let reached = (0..100).any(|_| {
        last = metric(&metrics(proxy), name, labels);
        let done = last >= at_least;
        if !done {
            std::thread::sleep(Duration::from_millis(50));
        }
        done
    });
    assert!(
        reached,
        "{name}{labels:?} = {last}, expected >= {at_least}\n{}",
        metrics(proxy)
    );
}

/// Where each of the four probes must land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expected {
    main_read: u16,
    main_write: u16,
    ci_read: u16,
    ci_write: u16,
}

fn expected(topo: &Topology, phase: u32) -> Expected {
    let main = topo.main_primary();
    let main_replica = topo.main_replica();
    Expected {
        main_read: main_replica,
        main_write: main,
        ci_read: if phase <= 2 {
            main_replica
        } else {
            topo.ci_replica()
        },
        // Phases 4–6 use the `ci` pool, but its write_host is still the main primary.
        ci_write: if phase == 7 { topo.ci_primary() } else { main },
    }
}

/// The node listening on `port`, so a failure names servers rather than ephemeral ports.
fn node_at(topo: &Topology, port: u16) -> String {
    topo.nodes()
        .into_iter()
        .find(|&n| topo.port(n) == port)
        .map_or_else(|| format!("unknown port {port}"), |n| n.name().to_string())
}

fn names(topo: &Topology, e: Expected) -> [String; 4] {
    [e.main_read, e.main_write, e.ci_read, e.ci_write].map(|p| node_at(topo, p))
}

const MAIN_READ: &str = "select inet_server_port(), count(*) from projects";
const MAIN_WRITE: &str =
    "update projects set name = name where id = 1 returning inet_server_port()";
const CI_READ: &str = "select inet_server_port() from ci_builds limit 1";
const CI_WRITE: &str = "update ci_builds set name = name where id = 1 returning inet_server_port()";

/// The four probes through `proxy`, by the simple and the extended protocol, and a
/// transaction opened by a deferred BEGIN, each compared with `want`.
async fn check_targets(topo: &Topology, proxy: &Proxy, phase: u32, want: Expected) {
    let client = proxy.connect().await;
    let got = Expected {
        main_read: port_of(&client, MAIN_READ).await,
        main_write: port_of(&client, MAIN_WRITE).await,
        ci_read: port_of(&client, CI_READ).await,
        ci_write: port_of(&client, CI_WRITE).await,
    };
    assert_eq!(
        names(topo, got),
        names(topo, want),
        "phase {phase}, simple protocol"
    );

    // Extended protocol: Parse/Bind/Execute with a parameter takes the same routes.
    let extended = |sql: &'static str| {
        let client = &client;
        async move {
            let row = tokio::time::timeout(BOUND, client.query_one(sql, &[&1i64]))
                .await
                .expect("bounded")
                .unwrap_or_else(|e| panic!("phase {phase} {sql}: {e:?}"));
            u16::try_from(row.get::<_, i32>(0)).expect("port")
        }
    };
    let got = Expected {
        main_read: extended("select inet_server_port() from projects where id = $1").await,
        main_write: extended(
            "update projects set name = name where id = $1 returning inet_server_port()",
        )
        .await,
        ci_read: extended("select inet_server_port() from ci_builds where id = $1").await,
        ci_write: extended(
            "update ci_builds set name = name where id = $1 returning inet_server_port()",
        )
        .await,
    };
    assert_eq!(
        names(topo, got),
        names(topo, want),
        "phase {phase}, extended protocol"
    );

    // A read-only transaction still goes to the write target: BEGIN is held back until the
    // first statement names its tables.
    for (sql, port) in [
        (
            "select inet_server_port() from projects limit 1",
            want.main_write,
        ),
        (
            "select inet_server_port() from ci_builds limit 1",
            want.ci_write,
        ),
    ] {
        simple(&client, "begin").await.expect("begin");
        let got = port_of(&client, sql).await;
        simple(&client, "commit").await.expect("commit");
        assert_eq!(
            node_at(topo, got),
            node_at(topo, port),
            "phase {phase}: in a transaction, {sql}"
        );
    }
}

/// Acceptance 1, phases 1–6 on the shipped phase files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_phases_1_to_6_route_reads_and_writes() {
    let topo = topology();
    for phase in 1..=6 {
        let proxy = Proxy::with(topo, |c| c.phase(phase));
        check_targets(topo, &proxy, phase, expected(topo, phase)).await;
    }
}

/// Acceptance 1, phase 7 on the shipped file, after promoting the CI cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_phase_7_routes_ci_writes_to_the_ci_primary() {
    let topo = promoted();
    let proxy = Proxy::with(topo, |c| c.phase(7));
    check_targets(topo, &proxy, 7, expected(topo, 7)).await;
}

/// Acceptance 2: phase 3 at 50 % random sends about half the ci reads to ci_replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_3_random_rollout_splits_ci_reads() {
    let topo = topology();
    let file = phase_copy(topo, 3, |t| t.replace("percent = 100.0", "percent = 50.0"));
    let proxy = proxy_with_phase_file(topo, &file);
    // Four clients at once keep the 2,000 round trips to a couple of seconds.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = proxy.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut ports = Vec::with_capacity(500);
            for _ in 0..500 {
                ports.push(port_of(&client, CI_READ).await);
            }
            ports
        }));
    }
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for task in tasks {
        for port in task.await.expect("reader task") {
            *counts.entry(port).or_default() += 1;
        }
    }
    let on_ci = counts.get(&topo.ci_replica()).copied().unwrap_or(0);
    let on_main = counts.get(&topo.main_replica()).copied().unwrap_or(0);
    assert_eq!(
        on_ci + on_main,
        2000,
        "only the two replicas may answer: {counts:?}"
    );
    let share = on_ci as f64 / 2000.0;
    assert!(
        (0.45..=0.55).contains(&share),
        "ci_replica share {share:.3}, expected 0.50 ± 0.05: {counts:?}"
    );
}

/// Acceptance 2: in `client` mode each connection stays on one side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_3_client_rollout_pins_each_connection() {
    let topo = topology();
    let file = phase_copy(topo, 3, |t| {
        t.replace("percent = 100.0", "percent = 50.0")
            .replace("mode = \"random\"", "mode = \"client\"")
    });
    let proxy = proxy_with_phase_file(topo, &file);
    let mut sides = Vec::new();
    for i in 0..20 {
        let client = proxy.connect().await;
        let mut seen = HashSet::new();
        for _ in 0..20 {
            seen.insert(port_of(&client, CI_READ).await);
        }
        assert_eq!(seen.len(), 1, "client {i} moved between sides: {seen:?}");
        sides.push(*seen.iter().next().expect("one side"));
    }
    let on_ci = sides.iter().filter(|&&p| p == topo.ci_replica()).count();
    // At 50 %, all 20 clients on one side has probability 2⁻¹⁹: both sides must show up.
    assert!(
        on_ci > 0 && on_ci < 20,
        "client-mode draw is not per client: {on_ci}/20 on ci_replica"
    );
    assert!(
        sides
            .iter()
            .all(|&p| p == topo.ci_replica() || p == topo.main_replica()),
        "{sides:?}"
    );
}

/// Acceptance 3: a ci transaction runs on the CI primary; touching projects inside it is
/// refused by the shipped phase 7 (enforce), and the connection goes on normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_7_ci_transaction_and_enforced_refusals() {
    let topo = promoted();
    let ci_primary = topo.ci_primary();
    let proxy = Proxy::with(topo, |c| c.phase(7));
    let client = proxy.connect().await;

    // Statement by statement: BEGIN is deferred, the SELECT pins the transaction to `ci`.
    simple(&client, "begin").await.expect("begin");
    assert_eq!(port_of(&client, CI_READ).await, ci_primary, "select in txn");
    assert_eq!(
        port_of(&client, CI_WRITE).await,
        ci_primary,
        "update in txn"
    );
    simple(&client, "commit").await.expect("commit");

    // The same transaction as one query string.
    let sql = format!("begin; {CI_READ}; {CI_WRITE}; commit");
    let rows = simple(&client, &sql).await.expect("one-string transaction");
    let ports: Vec<u16> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().expect("port")),
            _ => None,
        })
        .collect();
    assert_eq!(ports, vec![ci_primary, ci_primary], "{sql}");

    // A write to projects in a ci transaction would write the stale copy: GitLab's lock error.
    simple(&client, "begin").await.expect("begin");
    port_of(&client, CI_WRITE).await;
    let (code, message) =
        expect_error(&client, "update projects set name = name where id = 1").await;
    assert_eq!(code, "2F002", "{message}");
    assert_eq!(
        message,
        "Table: \"projects\" is write protected within this Gitlab database."
    );
    simple(&client, "rollback").await.expect("rollback");

    // A read of projects in a ci transaction would read stale data: wrong schema.
    simple(&client, "begin").await.expect("begin");
    port_of(&client, CI_READ).await;
    let (code, message) = expect_error(&client, "select count(*) from projects").await;
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("outside of allowed schemas"), "{message}");
    simple(&client, "rollback").await.expect("rollback");

    // The connection is fine afterwards, on both sides.
    simple(&client, "begin").await.expect("begin");
    assert_eq!(port_of(&client, CI_WRITE).await, ci_primary);
    simple(&client, "commit").await.expect("commit");
    assert_eq!(port_of(&client, MAIN_WRITE).await, topo.main_primary());
    assert_eq!(port_of(&client, MAIN_READ).await, topo.main_replica());

    let m = metrics(&proxy);
    for kind in ["locked_table_write", "wrong_schema"] {
        assert!(
            metric(&m, "pgdecomp_rejected_statements_total", &[("kind", kind)]) >= 1.0,
            "rejected {kind} not counted:\n{m}"
        );
    }
    assert!(
        metric(
            &m,
            "pgdecomp_locked_table_write_total",
            &[("db_config_name", "ci"), ("gitlab_schema", "gitlab_main")]
        ) >= 1.0,
        "{m}"
    );
}

/// Acceptance 3, observe side: with phase 7's violations set to observe, the same statements
/// run (on the pinned CI primary) and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_7_observe_counts_instead_of_refusing() {
    let topo = promoted();
    let ci_primary = topo.ci_primary();
    let file = phase_copy(topo, 7, |t| violations(t, "observe"));
    let proxy = proxy_with_phase_file(topo, &file);
    let client = proxy.connect().await;

    simple(&client, "begin").await.expect("begin");
    assert_eq!(port_of(&client, CI_WRITE).await, ci_primary);
    // Pinned: the projects statements cannot move to main, so they run on the CI primary.
    assert_eq!(port_of(&client, MAIN_WRITE).await, ci_primary);
    assert_eq!(port_of(&client, MAIN_READ).await, ci_primary);
    simple(&client, "commit").await.expect("commit");

    let ci = [("db_config_name", "ci")];
    wait_metric(
        &proxy,
        "pgdecomp_locked_table_write_total",
        &[ci[0], ("gitlab_schema", "gitlab_main")],
        1.0,
    );
    wait_metric(
        &proxy,
        "pgdecomp_wrong_schema_total",
        &[ci[0], ("gitlab_schemas", "gitlab_main")],
        1.0,
    );
    wait_metric(
        &proxy,
        "pgdecomp_cross_database_modification_total",
        &[("gitlab_schemas", "gitlab_ci,gitlab_main")],
        1.0,
    );
    let m = metrics(&proxy);
    assert_eq!(
        metric(&m, "pgdecomp_rejected_statements_total", &[]),
        0.0,
        "observe must not refuse:\n{m}"
    );
}

/// Acceptance 4, observe: the shipped phase 6 counts each kind with its labels and runs the
/// statements anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_6_observe_counts_each_violation_kind() {
    let topo = topology();
    let proxy = Proxy::with(topo, |c| c.phase(6));
    let client = proxy.connect().await;
    let main = topo.main_primary();

    simple(&client, CROSS_JOIN)
        .await
        .expect("observed cross-join runs");
    wait_metric(
        &proxy,
        "pgdecomp_cross_join_total",
        &[("gitlab_schemas", "gitlab_ci,gitlab_main")],
        1.0,
    );

    simple(&client, CROSS_DB_TXN)
        .await
        .expect("observed cross-db txn runs");
    wait_metric(
        &proxy,
        "pgdecomp_cross_database_modification_total",
        &[("gitlab_schemas", "gitlab_ci,gitlab_main")],
        1.0,
    );

    // A ci transaction (the `ci` pool) reading projects: wrong schema, still correct here
    // because the pool reaches the main primary.
    simple(&client, "begin").await.expect("begin");
    assert_eq!(port_of(&client, CI_WRITE).await, main);
    assert_eq!(port_of(&client, MAIN_READ).await, main);
    simple(&client, "commit").await.expect("commit");
    wait_metric(
        &proxy,
        "pgdecomp_wrong_schema_total",
        &[("db_config_name", "ci"), ("gitlab_schemas", "gitlab_main")],
        1.0,
    );
    let m = metrics(&proxy);
    assert_eq!(
        metric(&m, "pgdecomp_rejected_statements_total", &[]),
        0.0,
        "{m}"
    );
}

const CROSS_JOIN: &str = "select * from projects join ci_builds on ci_builds.id = projects.id";
const CROSS_DB_TXN: &str = "begin; update projects set name = name where id = 1; \
     update ci_builds set name = name where id = 1; commit";

/// Acceptance 4, enforce: a phase-6 copy with every kind enforced refuses each with its
/// SQLSTATE and a clear message, counts it, and the connection's next transaction runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_6_enforce_refuses_each_violation_kind() {
    let topo = topology();
    let main = topo.main_primary();
    let file = phase_copy(topo, 6, |t| violations(t, "enforce"));
    let proxy = proxy_with_phase_file(topo, &file);
    let client = proxy.connect().await;

    let (code, message) = expect_error(&client, CROSS_JOIN).await;
    assert_eq!(code, "0A000", "{message}");
    assert!(
        message.starts_with("Unsupported cross-join across 'projects, ci_builds'")
            && message.contains(CROSS_JOIN),
        "{message}"
    );
    assert_eq!(port_of(&client, MAIN_READ).await, topo.main_replica());

    // Statement by statement, so the error belongs to the second update.
    simple(&client, "begin").await.expect("begin");
    assert_eq!(port_of(&client, MAIN_WRITE).await, main);
    let (code, message) =
        expect_error(&client, "update ci_builds set name = name where id = 1").await;
    assert_eq!(code, "25000", "{message}");
    assert!(
        message.starts_with("Cross-database data modification of"),
        "{message}"
    );
    // The refusal aborts the transaction exactly as a server error would.
    let (code, _) = expect_error(&client, "select 1").await;
    assert_eq!(code, "25P02", "statements after a refusal in a transaction");
    simple(&client, "rollback").await.expect("rollback");
    simple(&client, "begin").await.expect("begin");
    assert_eq!(port_of(&client, MAIN_WRITE).await, main);
    simple(&client, "commit").await.expect("commit");

    simple(&client, "begin").await.expect("begin");
    assert_eq!(port_of(&client, CI_WRITE).await, main);
    let (code, message) = expect_error(&client, "select count(*) from projects").await;
    assert_eq!(code, "42501", "{message}");
    assert!(
        message.contains("[\"projects\"]") && message.contains("'ci'"),
        "{message}"
    );
    simple(&client, "rollback").await.expect("rollback");
    simple(&client, "begin").await.expect("begin");
    assert_eq!(port_of(&client, CI_WRITE).await, main);
    simple(&client, "commit").await.expect("commit");

    let m = metrics(&proxy);
    for (name, labels) in [
        (
            "pgdecomp_cross_join_total",
            vec![("gitlab_schemas", "gitlab_ci,gitlab_main")],
        ),
        (
            "pgdecomp_cross_database_modification_total",
            vec![("gitlab_schemas", "gitlab_ci,gitlab_main")],
        ),
        (
            "pgdecomp_wrong_schema_total",
            vec![("db_config_name", "ci"), ("gitlab_schemas", "gitlab_main")],
        ),
        (
            "pgdecomp_rejected_statements_total",
            vec![("kind", "cross_join")],
        ),
        (
            "pgdecomp_rejected_statements_total",
            vec![("kind", "cross_database_modification")],
        ),
        (
            "pgdecomp_rejected_statements_total",
            vec![("kind", "wrong_schema")],
        ),
    ] {
        assert!(metric(&m, name, &labels) >= 1.0, "{name}{labels:?}:\n{m}");
    }
}

/// Acceptance 5: an unparsable statement goes to the main primary (fail closed), is counted,
/// and the server's own syntax error comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_statement_goes_to_main_primary() {
    let topo = topology();
    // Phase 3: the phase where a replica is most tempting for a statement that looks like a read.
    let proxy = Proxy::with(topo, |c| c.phase(3));
    let client = proxy.connect().await;
    let before = metric(
        &metrics(&proxy),
        "pgdecomp_unparsable_statements_total",
        &[],
    );
    let token = format!(
        "pgdecomp-unparsable-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    );
    let sql = format!("SELEC '{token}' from ci_builds");
    let (code, message) = expect_error(&client, &sql).await;
    assert_eq!(code, "42601", "{message}");
    assert!(message.contains("syntax error"), "{message}");
    wait_metric(
        &proxy,
        "pgdecomp_unparsable_statements_total",
        &[],
        before + 1.0,
    );
    wait_metric(
        &proxy,
        "pgdecomp_routes_total",
        &[("db_config_name", "main"), ("reason", "unparsable")],
        1.0,
    );
    // The server logs the failing statement (log_min_error_statement = error): only the main
    // primary may have it.
    wait_until("the main primary to log the unparsable statement", || {
        topo.server_log(Node::MainPrimary).contains(&token)
    });
    for node in [Node::MainReplica, Node::CiPrimary, Node::CiReplica] {
        assert!(
            !topo.server_log(node).contains(&token),
            "{} ran the unparsable statement",
            node.name()
        );
    }
    assert_eq!(port_of(&client, MAIN_READ).await, topo.main_replica());
}

/// Acceptance 6: a `ci` db_config connection reading projects: counted in observe (shipped
/// phase 6), refused in enforce (a phase-6 copy), and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_db_config_reading_projects_is_wrong_schema() {
    let topo = topology();
    let labels = [
        ("db_config_name", "ci_replica"),
        ("gitlab_schemas", "gitlab_main"),
    ];

    let proxy = Proxy::with(topo, |c| c.phase(6));
    let ci = proxy
        .connect_with(&proxy.config(GITLAB.0, GITLAB.1, "ci"))
        .await;
    // It runs where the ci connection reads: ci_replica.
    assert_eq!(port_of(&ci, MAIN_READ).await, topo.ci_replica());
    wait_metric(&proxy, "pgdecomp_wrong_schema_total", &labels, 1.0);
    drop(proxy);

    let file = phase_copy(topo, 6, |t| violations(t, "enforce"));
    let proxy = proxy_with_phase_file(topo, &file);
    let ci = proxy
        .connect_with(&proxy.config(GITLAB.0, GITLAB.1, "ci"))
        .await;
    let (code, message) = expect_error(&ci, MAIN_READ).await;
    assert_eq!(code, "42501", "{message}");
    assert!(
        message.contains("[\"projects\"]") && message.contains("outside of allowed schemas"),
        "{message}"
    );
    wait_metric(&proxy, "pgdecomp_wrong_schema_total", &labels, 1.0);
    assert_eq!(port_of(&ci, CI_READ).await, topo.ci_replica());
    simple(&ci, "begin").await.expect("begin");
    assert_eq!(port_of(&ci, CI_WRITE).await, topo.main_primary());
    simple(&ci, "commit").await.expect("commit");
}

/// Phase 7 makes a misrouted transaction visible (before it, main and ci writes share a host):
/// a main transaction opened after ci statements must still run on the main primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_7_main_transaction_after_ci_statements() {
    let topo = promoted();
    let proxy = Proxy::with(topo, |c| c.phase(7));
    let txn = "select inet_server_port() from projects limit 1";
    let ext_read = "e:select inet_server_port() from ci_builds where id = $1";
    let ext_write = "e:update ci_builds set name = name where id = $1 returning inet_server_port()";
    let cases: [(&str, &[&str]); 6] = [
        ("fresh connection", &[]),
        ("after a simple ci read", &[CI_READ]),
        ("after a simple ci write", &[CI_WRITE]),
        ("after a ci transaction", &["begin", CI_WRITE, "commit"]),
        ("after an extended ci read", &[ext_read]),
        ("after an extended ci write", &[ext_write]),
    ];
    let mut wrong = Vec::new();
    for (case, before) in cases {
        let client = proxy.connect().await;
        for sql in before {
            match sql.strip_prefix("e:") {
                Some(sql) => {
                    client.query_one(sql, &[&1i64]).await.expect(sql);
                }
                None => {
                    simple(&client, sql).await.expect(sql);
                }
            }
        }
        simple(&client, "begin").await.expect("begin");
        let got = port_of(&client, txn).await;
        simple(&client, "commit").await.expect("commit");
        if got != topo.main_primary() {
            wrong.push(format!("{case}: {}", node_at(topo, got)));
        }
    }
    assert!(
        wrong.is_empty(),
        "main transactions not on main_primary: {wrong:?}"
    );
}

/// Pipelined requests (tokio-postgres sends both before reading either reply) are separate
/// transactions and must each be routed by their own tables, not follow the first one's server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_7_pipelined_requests_are_routed_separately() {
    let topo = promoted();
    let proxy = Proxy::with(topo, |c| c.phase(7));
    pipelined_read_then_main_write(
        topo,
        &proxy,
        "select inet_server_port() from ci_builds where id = $1",
        "ci_replica",
    )
    .await;
}

/// The same in phase 1: not a phase-7 matter, a pipelined write can land on a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_1_pipelined_write_after_read_is_not_sent_to_the_replica() {
    let topo = topology();
    let proxy = Proxy::with(topo, |c| c.phase(1));
    pipelined_read_then_main_write(
        topo,
        &proxy,
        "select inet_server_port() from projects where id = $1",
        "main_replica",
    )
    .await;
}

/// Ten rounds of (`read`, update projects) pipelined; the read must land on `read_node`, the
/// write on the main primary.
async fn pipelined_read_then_main_write(
    topo: &Topology,
    proxy: &Proxy,
    read: &str,
    read_node: &str,
) {
    let client = proxy.connect().await;
    let read_stmt = client.prepare(read).await.expect("prepare read");
    let main_write = client
        .prepare("update projects set name = name where id = $1 returning inet_server_port()")
        .await
        .expect("prepare main write");
    let mut wrong = Vec::new();
    for round in 0..10 {
        let (a, b) = tokio::time::timeout(
            BOUND,
            futures_util::future::join(
                client.query_one(&read_stmt, &[&1i64]),
                client.query_one(&main_write, &[&1i64]),
            ),
        )
        .await
        .expect("pipelined pair within bound");
        let port = |r: Result<tokio_postgres::Row, tokio_postgres::Error>| match r {
            Ok(row) => node_at(topo, u16::try_from(row.get::<_, i32>(0)).expect("port")),
            Err(e) => match e.as_db_error() {
                Some(db) => format!("error {}: {}", db.code().code(), db.message()),
                None => format!("error {e}"),
            },
        };
        let got = (port(a), port(b));
        if got != (read_node.to_string(), "main_primary".to_string()) {
            wrong.push(format!("round {round}: {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "(read, main write) pipelined: {wrong:?}");
}

/// `sql` padded with spaces to `len` bytes, so that every message of a test is as long.
fn padded(sql: &str, len: usize) -> String {
    assert!(sql.len() <= len, "{sql} is longer than {len}");
    format!("{sql:len$}")
}

/// Exactly `n` statements of violation `kind` refused by `proxy`.
fn assert_refused(proxy: &Proxy, kind: &str, n: u32) {
    let m = metrics(proxy);
    let refused = metric(&m, "pgdecomp_rejected_statements_total", &[("kind", kind)]);
    assert_eq!(refused, f64::from(n), "{kind}:\n{m}");
}

/// The same as below in transaction pooling, in one long transaction: every message is as
/// long, so after the 8 KiB read buffer wraps (about every hundred messages) each lands where
/// an earlier one of the transaction sat. Each refused ci write is rolled back to a savepoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_7_a_long_main_transaction_refuses_every_ci_write() {
    const WRITES: u32 = 300;
    let topo = promoted();
    let len = CI_WRITE.len();
    let main_write = padded(
        "update projects set name = name where id = 1 returning inet_server_port()",
        len,
    );
    let (begin, savepoint) = (padded("begin", len), padded("savepoint s", len));
    let (back, commit) = (
        padded("rollback to savepoint s", len),
        padded("commit", len),
    );
    let proxy = Proxy::with(topo, |c| c.phase(7));
    let client = proxy.connect().await;
    simple(&client, &begin).await.expect("begin");
    let port = port_of(&client, &main_write).await;
    assert_eq!(port, topo.main_primary(), "the transaction is on main");
    simple(&client, &savepoint).await.expect("savepoint");
    for n in 0..WRITES {
        let (code, message) = expect_error(&client, CI_WRITE).await;
        assert_eq!(code, "2F002", "ci write {n}: {message}");
        simple(&client, &back).await.expect("rollback to savepoint");
    }
    simple(&client, &commit).await.expect("commit");
    assert_refused(&proxy, "locked_table_write", WRITES);
}

/// In session pooling the client keeps its server for the whole session. The session once
/// remembered classifications by where each text sat in the client's read buffer, past the end
/// of their batch: once the buffer wrapped, a ci write read where a main write of the same
/// length had sat took its classification, and ran on the main primary instead of being
/// refused. Every message here is as long, so one lands where the main write sat each time
/// the 8 KiB buffer wraps (about every hundred).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_7_session_pooling_refuses_a_ci_write_read_where_a_main_write_sat() {
    const WRITES: u32 = 300;
    let topo = promoted();
    let main_write = "update projects  set name = name where id = 1 returning inet_server_port()";
    assert_eq!(
        main_write.len(),
        CI_WRITE.len(),
        "the two texts must be as long"
    );
    let proxy = Proxy::with(topo, |c| c.phase(7).pool_mode("session"));
    let client = proxy.connect().await;
    let port = port_of(&client, main_write).await;
    assert_eq!(port, topo.main_primary(), "the session is on main");
    for n in 0..WRITES {
        let (code, message) = expect_error(&client, CI_WRITE).await;
        assert_eq!(code, "2F002", "ci write {n}: {message}");
    }
    assert_refused(&proxy, "locked_table_write", WRITES);
}
