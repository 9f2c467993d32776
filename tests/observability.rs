//! The observability deliverables against a live pgdecomp: every metric name the Grafana
//! dashboard and the alert rules use must be exported, the rules must pass promtool, and the
//! dashboard must be valid JSON bound to a Prometheus datasource variable.

mod common;

use common::cluster::{free_port, wait_until, Kind, Topology, DATABASE};
use common::proxy::{connect, Proxy, ProxyConfig, GITLAB};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio_postgres::Client;

const DASHBOARD: &str = "dashboards/pgdecomp.json";
const ALERTS: &str = "dashboards/alerts.yml";
const ALERTS_TEST: &str = "dashboards/alerts_test.yml";
/// The name prefixes pgdecomp exports; anything else in the files (`up`, label names, PromQL
/// functions) is not ours to check.
const PREFIXES: [&str; 2] = ["pgdecomp_", "gitlab_database_"];
/// Suffixes the text format adds to a histogram's name.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Identifiers matching `(pgdecomp_|gitlab_database_)[a-z0-9_]+` that start at an identifier
/// boundary, so `xpgdecomp_a` is not taken for `pgdecomp_a`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    for prefix in PREFIXES {
        for (start, _) in text.match_indices(prefix) {
            if start > 0 && is_ident(bytes[start - 1]) {
                continue;
            }
            let len = bytes[start..]
                .iter()
                .take_while(|&&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                .count();
            names.insert(text[start..start + len].to_string());
        }
    }
    names
}

/// What one scrape exposes: metric families with their type, and sample names.
struct Exposition {
    /// `# TYPE name type` lines.
    types: Vec<(String, String)>,
    /// Names of sample lines (`name{labels} value` or `name value`).
    samples: BTreeSet<String>,
    text: String,
}

impl Exposition {
    fn parse(text: String) -> Exposition {
        let mut types = Vec::new();
        let mut samples = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.push((name.to_string(), kind.to_string()));
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Exposition {
            types,
            samples,
            text,
        }
    }

    fn kind_of(&self, family: &str) -> Option<&str> {
        self.types
            .iter()
            .find(|(name, _)| name == family)
            .map(|(_, kind)| kind.as_str())
    }

    /// Why `name`, as a query would use it, has no data here; `None` when it has.
    /// `_bucket`/`_sum`/`_count` must belong to a family typed `histogram`; every name needs a
    /// sample, because a `# TYPE` line alone would not give a panel or an alert any data.
    fn missing(&self, name: &str) -> Option<String> {
        let histogram_base = HISTOGRAM_SUFFIXES
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| self.kind_of(base) == Some("histogram"));
        let family = histogram_base.unwrap_or(name);
        match self.kind_of(family) {
            None => Some(format!("{name}: no `# TYPE {family}` line")),
            Some("histogram") if histogram_base.is_none() => Some(format!(
                "{name}: a histogram is queried as {name}_bucket, _sum or _count"
            )),
            Some(_) if !self.samples.contains(name) => Some(format!("{name}: no sample")),
            Some(_) => None,
        }
    }

    /// The value of the sample `name{labels}` written exactly as the encoder does, e.g.
    /// `pgdecomp_config_reload_total{result="ok"}`.
    fn value(&self, series: &str) -> Option<f64> {
        self.text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }
}

/// `GET /metrics` over a plain socket: HTTP/1.0 so the server closes and we read to the end.
fn scrape(port: u16) -> Exposition {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to metrics port {port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send metrics request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read metrics response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header/body separator in:\n{response}"));
    assert!(
        head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200"),
        "GET /metrics failed:\n{head}"
    );
    Exposition::parse(body.to_string())
}

/// Runs `sql` (simple protocol) and returns whether it succeeded: several scenario statements
/// are meant to fail (unparsable, refused, unreachable replica), and only the counters matter.
async fn run(client: &Client, sql: &str) -> Result<(), String> {
    client
        .simple_query(sql)
        .await
        .map(|_| ())
        .map_err(|e| match e.as_db_error() {
            // The Display of a server error is only "db error"; keep SQLSTATE and message.
            Some(db) => format!("{sql}: {} {}", db.code().code(), db.message()),
            None => format!("{sql}: {e}"),
        })
}

/// Rewrites the proxy's config file and sends SIGHUP, then waits until the reload counter for
/// `result` has moved past `before`: the reload is asynchronous to the signal. The blocking
/// wait is fine here: the multi-thread runtime keeps driving the client connections meanwhile.
fn reload_with(proxy: &Proxy, config: &str, result: &str) {
    let port = proxy.metrics_port().expect("metrics port");
    let series = format!("pgdecomp_config_reload_total{{result=\"{result}\"}}");
    let before = scrape(port).value(&series).unwrap_or(0.0);
    std::fs::write(proxy.config_path(), config).expect("rewrite config");
    proxy.reload();
    wait_until(&format!("{series} > {before}"), || {
        scrape(port).value(&series).unwrap_or(0.0) > before
    });
}

/// Drives one MainOnly proxy through phases 1, 6 and 7 (switched by SIGHUP reloads, as an
/// operator would) so that every labelled series the dashboard and alerts use has a child: the
/// `prometheus` crate prints nothing at all, not even `# TYPE`, for a vector without children.
async fn produce_every_series(proxy: &Proxy, config: &ProxyConfig) {
    let app = proxy.connect().await;

    // Phase 1. MainOnly has no replicas, so reads fall back to the main primary (counted).
    run(&app, "select count(*) from projects")
        .await
        .expect("read");
    run(&app, "update projects set id = id where false")
        .await
        .expect("write");
    // Observed in phase 1: counted, not refused. Also a schemas-used series with both groups.
    run(
        &app,
        "select * from projects join ci_builds on ci_builds.id = projects.id",
    )
    .await
    .expect("a cross-join is only observed in phase 1");
    run(&app, "SELEC 1")
        .await
        .expect_err("the server rejects what pgdecomp could not parse");
    // One transaction writing both databases: a cross-database modification.
    for sql in [
        "begin",
        "update projects set id = id where false",
        "update ci_builds set id = id where false",
        "rollback",
    ] {
        run(&app, sql).await.expect("observed in phase 1");
    }
    let refused = connect(&proxy.config(GITLAB.0, "wrong password", DATABASE)).await;
    assert!(refused.is_err(), "a wrong password must be refused");

    // Phase 6: ci has its own write connection, and phase 7's rules run as a shadow.
    reload_with(proxy, &config.clone().phase(6).build(), "ok");
    run(
        &app,
        "select * from projects join ci_builds on ci_builds.id = projects.id",
    )
    .await
    .expect("phase 6 only observes; phase 7 (the shadow) would refuse");
    // Pinned to the ci connection, then a main table: wrong schema (observed).
    for sql in [
        "begin",
        "update ci_builds set id = id where false",
        "update projects set id = id where false",
        "rollback",
    ] {
        run(&app, sql).await.expect("observed in phase 6");
    }

    // Phase 7 locks the other database's tables and enforces every rule. The main cluster now
    // lists a replica nobody listens on: main reads fail to connect to it (counted per target)
    // and fall back to the primary.
    let dead_replica = free_port();
    // MainOnly lists no replicas; the first `replicas = []` is `[clusters.main]`'s.
    let phase7 = config.clone().phase(7).build().replacen(
        "replicas = []",
        &format!("replicas = [\"127.0.0.1:{dead_replica}\"]"),
        1,
    );
    assert!(phase7.contains(&dead_replica.to_string()), "{phase7}");
    reload_with(proxy, &phase7, "ok");
    run(&app, "begin").await.expect("begin");
    run(&app, "update ci_builds set id = id where false")
        .await
        .expect("ci write on ci");
    let locked = run(&app, "update projects set id = id where false")
        .await
        .expect_err("a main table is write-locked on the ci database in phase 7");
    assert!(
        locked.contains("2F002"),
        "GitLab's locked-table error: {locked}"
    );
    run(&app, "rollback").await.expect("rollback");
    run(&app, "select count(*) from projects")
        .await
        .expect("an unreachable replica is skipped for the primary");

    // A broken file: the reload fails and the old config stays live.
    reload_with(proxy, "this is not = = toml", "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let topo = Topology::shared(Kind::MainOnly);
    let config = ProxyConfig::new(topo).phase(1);
    let proxy = Proxy::start(&config.build());
    let port = proxy
        .metrics_port()
        .expect("the test config sets metrics_listen");
    produce_every_series(&proxy, &config).await;
    let exposed = scrape(port);

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for file in [DASHBOARD, ALERTS] {
        let names = metric_names(&read_repo_file(file));
        assert!(!names.is_empty(), "{file} uses no pgdecomp metric");
        for name in names {
            if let Some(why) = exposed.missing(&name) {
                missing.push(format!("{file}: {why}"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "names used but not exported:\n{}\n--- /metrics ---\n{}",
        missing.join("\n"),
        exposed.text
    );

    // The converse: a family pgdecomp exports but the dashboard never shows is a blind spot.
    let dashboard = metric_names(&read_repo_file(DASHBOARD));
    let unshown: Vec<&str> = exposed
        .types
        .iter()
        .map(|(family, _)| family.as_str())
        .filter(|family| {
            !dashboard.contains(*family)
                && !HISTOGRAM_SUFFIXES
                    .iter()
                    .any(|s| dashboard.contains(&format!("{family}{s}")))
        })
        .collect();
    assert!(
        unshown.is_empty(),
        "exported but not on the dashboard: {unshown:?}"
    );
    eprintln!("{} metric names checked: {used:?}", used.len());
}

/// Runs `promtool <args> <file>` and panics with its output unless it succeeds.
fn promtool(args: &[&str], file: &str) -> String {
    let out = Command::new("promtool")
        .args(args)
        .arg(repo_file(file))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` \
                 (scripts/test does) so the alert rules can be checked"
            )
        });
    let report = format!(
        "promtool {} {file} ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    report
}

#[test]
fn alert_rules_pass_promtool() {
    eprintln!("{}", promtool(&["check", "rules"], ALERTS));
}

/// Valid rules can still be wrong PromQL: `dashboards/alerts_test.yml` feeds series through
/// them (phase gate on `instance`, per-kind `or`, `for:` durations) and expects exact alerts.
#[test]
fn alert_rules_fire_as_their_unit_tests_expect() {
    eprintln!("{}", promtool(&["test", "rules"], ALERTS_TEST));
}

#[test]
fn dashboard_is_grafana_json_on_a_prometheus_datasource_variable() {
    let text = read_repo_file(DASHBOARD);
    let dash: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    // Grafana 9+ layout (fieldConfig, datasource objects); older importers would migrate it.
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(schema >= 36, "schemaVersion {schema} < 36");

    let variables = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` template variable"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    assert_eq!(variable("instance")["type"], "query");

    // Every query must go through the variable, so the dashboard imports into any Grafana,
    // and filter by the selected instances.
    let uses_variable = |ds: &serde_json::Value| ds["uid"] == "${datasource}";
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id in {title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            uses_variable(&panel["datasource"]),
            "panel {title}: datasource {}",
            panel["datasource"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            assert!(uses_variable(&target["datasource"]), "{title}: {expr}");
            assert!(
                expr.contains("$instance"),
                "{title} ignores $instance: {expr}"
            );
            queries += 1;
        }
    }
    assert!(queries > 0, "the dashboard has no queries");
}
