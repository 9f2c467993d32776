//! Real-driver conformance suite (issue 10): psycopg 3, asyncpg, node-postgres, pgJDBC and Ruby
//! pg + ActiveRecord, in every protocol mode each offers, against pgdecomp in phases 1, 4 and 7,
//! through the transparent database and the per-db_config databases `main` and `ci`.
//!
//! Each driver program (`tests/drivers/*/`) runs a fixed list of scenarios per protocol mode and
//! prints one JSON line per (mode, scenario): the outcome of every step (the server that
//! `inet_server_port()` names, or the SQLSTATE of an error) and the change of pgdecomp's
//! violation counters over the scenario. This file decides what is right for each phase. In
//! phase 7 it also checks both primaries directly: no row written through pgdecomp may sit on
//! the cluster that does not own its table.
//!
//! `*_direct_postgres` runs the same programs straight against the main primary, with triggers
//! that refuse the phase-7 writes the way GitLab's write locks do: it proves the programs and
//! these expectations right without pgdecomp, so a failure elsewhere is pgdecomp's.
//!
//! Drivers come from `scripts/test` (pip, npm, Debian); run with
//! `cargo test --test drivers -- --nocapture` to see the table of every (mode, scenario).

mod common;

use common::cluster::{run_bounded, Kind, Node, Topology, DATABASE};
use common::drivers::{drivers_dir, run_driver, DriverRun, Observation};
use common::proxy::{Proxy, GITLAB};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Phases 1 and 4 and the direct check share one topology: nothing they do changes routing.
fn topology() -> &'static Topology {
    Topology::shared(Kind::Full)
}

/// Phase 7 needs the CI cluster promoted, which cannot be undone: a topology of its own.
fn promoted() -> &'static Topology {
    static PROMOTED: OnceLock<Topology> = OnceLock::new();
    PROMOTED.get_or_init(|| {
        let topo = Topology::start(Kind::Full);
        topo.promote_ci();
        topo
    })
}

/// A driver program may run this long in all; each scenario inside it has its own bound.
const DRIVER_LIMIT: Duration = Duration::from_secs(240);
const SCENARIO_LIMIT_SECS: u64 = 30;
/// Transactions per violation scenario, and so the exact counter change expected.
const N: u64 = 20;
/// Iterations of each routing scenario.
const N_ROUTE: u64 = 3;

/// Every driver runs these in every mode.
const COMMON: &[&str] = &[
    "route_transparent",
    "route_main",
    "route_ci",
    "cross_db_ci_main",
    "cross_db_main_ci",
    "cross_join",
    "wrong_schema_ci",
    "wrong_schema_main",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    Psycopg,
    Asyncpg,
    NodePg,
    Jdbc,
    Ruby,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Psycopg => "psycopg",
            Driver::Asyncpg => "asyncpg",
            Driver::NodePg => "node",
            Driver::Jdbc => "jdbc",
            Driver::Ruby => "ruby",
        }
    }

    /// Protocol modes, each with the scenarios it runs besides [`COMMON`].
    fn modes(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            // simple: client-side binding, simple Query; extended: unnamed Parse/Bind/Execute;
            // named: prepare=True per statement; named_all: prepare_threshold=0, BEGIN and
            // COMMIT named too; pipeline: conn.pipeline(), BEGIN extended in the same batch.
            Driver::Psycopg => &[
                ("simple", &["savepoint", "multi_statement", "copy"]),
                ("extended", &["savepoint", "copy", "cancel"]),
                ("named", &["savepoint", "two_conns", "copy"]),
                ("named_all", &["savepoint", "two_conns"]),
                ("pipeline", &[]),
            ],
            // cache: the default statement cache (named); nocache: statement_cache_size=0;
            // prepared: conn.prepare() outside any transaction, executed inside later ones.
            Driver::Asyncpg => &[
                ("cache", &["savepoint", "two_conns", "copy", "cancel"]),
                ("nocache", &["savepoint"]),
                ("prepared", &["savepoint", "prepare_only", "two_conns"]),
            ],
            // BEGIN simple in simple/extended/named/pool; extended or named in begin_*.
            Driver::NodePg => &[
                ("simple", &["multi_statement"]),
                ("extended", &[]),
                ("named", &["two_conns"]),
                ("begin_extended", &[]),
                ("begin_named", &[]),
                ("pool", &["two_conns"]),
            ],
            // simple: preferQueryMode=simple; unnamed: prepareThreshold=0; named:
            // prepareThreshold=-1; default: 5, so named past the fifth execution; explicit:
            // autocommit on with BEGIN/COMMIT statements. The others use setAutoCommit(false),
            // where pgJDBC sends BEGIN in the same batch as the first statement.
            Driver::Jdbc => &[
                ("simple", &["copy"]),
                ("unnamed", &[]),
                ("named", &["two_conns"]),
                ("default", &["two_conns", "copy", "cancel"]),
                ("explicit", &[]),
            ],
            // exec (simple), exec_params (unnamed), prepared (prepare/exec_prepared),
            // ActiveRecord with prepared_statements true and false.
            Driver::Ruby => &[
                ("exec", &["multi_statement"]),
                ("exec_params", &[]),
                ("prepared", &["prepare_only", "two_conns"]),
                ("ar_prepared", &[]),
                ("ar_unprepared", &[]),
            ],
        }
    }

    fn plan(self) -> Vec<(&'static str, Vec<&'static str>)> {
        self.modes()
            .iter()
            .map(|(mode, extra)| {
                let mut scenarios = COMMON.to_vec();
                scenarios.extend_from_slice(extra);
                (*mode, scenarios)
            })
            .collect()
    }

    fn command(self, topo: &Topology) -> Command {
        let dir = drivers_dir();
        match self {
            Driver::Psycopg | Driver::Asyncpg => {
                let mut cmd = Command::new("python3");
                cmd.arg(dir.join("python/driver.py")).arg(self.name());
                cmd
            }
            Driver::NodePg => {
                let pg = dir.join("node/node_modules/pg");
                assert!(
                    pg.is_dir(),
                    "{} is missing: run `npm ci` in tests/drivers/node (scripts/test does)",
                    pg.display()
                );
                let mut cmd = Command::new("node");
                cmd.arg(dir.join("node/driver.js"));
                cmd
            }
            Driver::Jdbc => {
                let mut cmd = Command::new("java");
                cmd.arg("-cp")
                    .arg(format!("{}:{JDBC_JAR}", jdbc_classes(topo).display()))
                    .arg("JdbcDriver");
                cmd
            }
            Driver::Ruby => {
                let mut cmd = Command::new("ruby");
                cmd.arg(dir.join("ruby/driver.rb"));
                cmd
            }
        }
    }
}

const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// `JdbcDriver.java` compiled once per test run, into a directory removed with `topo`.
fn jdbc_classes(topo: &Topology) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            Path::new(JDBC_JAR).is_file(),
            "{JDBC_JAR} is missing: install libpostgresql-jdbc-java (scripts/test does)"
        );
        let dir = topo.temp_dir().join("jdbc-classes");
        let out = run_bounded(
            Command::new("javac")
                .arg("-d")
                .arg(&dir)
                .arg("-cp")
                .arg(JDBC_JAR)
                .arg(drivers_dir().join("java/JdbcDriver.java")),
            "",
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "javac JdbcDriver.java failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Straight to the main primary, with write-lock triggers instead of pgdecomp.
    Direct,
    P1,
    P4,
    P7,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Direct => "direct",
            Phase::P1 => "phase 1",
            Phase::P4 => "phase 4",
            Phase::P7 => "phase 7",
        }
    }

    /// Phases 1 and 4 ship with every violation observed; phase 7 with every one enforced.
    fn enforced(self) -> bool {
        self == Phase::P7
    }
}

/// The server (node name) each kind of statement must run on.
struct Targets {
    main_write: &'static str,
    main_read: &'static str,
    ci_write: &'static str,
    ci_read: &'static str,
}

/// `../shared/reference/phases.md`: the topology per phase. A per-db_config connection uses
/// the same targets as transparent routing of its own group.
fn targets(phase: Phase) -> Targets {
    match phase {
        Phase::Direct => Targets {
            main_write: "main_primary",
            main_read: "main_primary",
            ci_write: "main_primary",
            ci_read: "main_primary",
        },
        Phase::P1 => Targets {
            main_write: "main_primary",
            main_read: "main_replica",
            ci_write: "main_primary",
            ci_read: "main_replica",
        },
        // The `ci` pool still connects to the main primary host.
        Phase::P4 => Targets {
            main_write: "main_primary",
            main_read: "main_replica",
            ci_write: "main_primary",
            ci_read: "ci_replica",
        },
        Phase::P7 => Targets {
            main_write: "main_primary",
            main_read: "main_replica",
            ci_write: "ci_primary",
            ci_read: "ci_replica",
        },
    }
}

const VIOLATION_COUNTERS: [&str; 4] = [
    "pgdecomp_cross_join_total",
    "pgdecomp_cross_database_modification_total",
    "pgdecomp_wrong_schema_total",
    "pgdecomp_locked_table_write_total",
];
const REJECTED: &str = "pgdecomp_rejected_statements_total";
const CROSS_JOIN: &str = "pgdecomp_cross_join_total";
const CROSS_DB: &str = "pgdecomp_cross_database_modification_total";
const WRONG_SCHEMA: &str = "pgdecomp_wrong_schema_total";
const LOCKED: &str = "pgdecomp_locked_table_write_total";

type Labels = Vec<(&'static str, &'static str)>;

/// What one (phase, scenario) must observe: every step's outcomes exactly, and exact
/// changes of the listed counters.
#[derive(Default)]
struct Expect {
    steps: BTreeMap<String, BTreeMap<String, u64>>,
    metrics: Vec<(&'static str, Labels, f64)>,
}

impl Expect {
    fn step(&mut self, name: &str, outcome: &str, n: u64) {
        *self
            .steps
            .entry(name.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_default() += n;
    }

    /// `n` transactions of `ops` (step, outcome), all committed.
    fn committed(&mut self, prefix: &str, ops: &[(&str, &str)], n: u64) {
        for (op, outcome) in ops {
            self.step(&format!("{prefix}{op}"), outcome, n);
        }
        self.step(&format!("{prefix}commit"), "ok", n);
    }

    /// `n` transactions where `ops` succeed, then `refused` fails with `err`, then ROLLBACK.
    fn refused(&mut self, prefix: &str, ops: &[(&str, &str)], refused: &str, err: &str, n: u64) {
        for (op, outcome) in ops {
            self.step(&format!("{prefix}{op}"), outcome, n);
        }
        self.step(&format!("{prefix}{refused}"), err, n);
        self.step(&format!("{prefix}rollback"), "ok", n);
    }

    /// The same prepared statements in a fresh transaction per group, after the loop.
    fn after(&mut self, t: &Targets, groups: &[&str]) {
        for g in groups {
            let port = if *g == "ci" { t.ci_write } else { t.main_write };
            self.committed(&format!("after_{g}_"), &[("ins", "ok"), ("port", port)], 1);
        }
    }

    fn metric(&mut self, name: &'static str, labels: Labels, delta: f64) {
        self.metrics.push((name, labels, delta));
    }

    fn no_violations(&mut self) {
        for name in VIOLATION_COUNTERS {
            self.metric(name, vec![], 0.0);
        }
        self.metric(REJECTED, vec![], 0.0);
    }

    /// Observe mode: counted `n` times, never refused.
    fn observed(&mut self, name: &'static str, n: u64) {
        self.metric(name, vec![], n as f64);
        self.metric(REJECTED, vec![], 0.0);
    }

    /// Enforce mode: counted and refused `n` times.
    fn enforced(&mut self, name: &'static str, kind: &'static str, n: u64) {
        self.metric(name, vec![], n as f64);
        self.metric(REJECTED, vec![("kind", kind)], n as f64);
    }
}

fn expect(phase: Phase, scenario: &str) -> Expect {
    let t = targets(phase);
    let direct = phase == Phase::Direct;
    let mut e = Expect::default();
    match scenario {
        "route_transparent" | "route_main" | "route_ci" => {
            if scenario != "route_main" {
                e.committed("ci_", &[("ins", "ok"), ("port", t.ci_write)], N_ROUTE);
                e.step("ci_read", t.ci_read, N_ROUTE);
            }
            if scenario != "route_ci" {
                e.committed("main_", &[("ins", "ok"), ("port", t.main_write)], N_ROUTE);
                e.step("main_read", t.main_read, N_ROUTE);
            }
            e.no_violations();
        }
        "cross_db_ci_main" | "cross_db_main_ci" => {
            let (first, second, first_port) = if scenario == "cross_db_ci_main" {
                ("ci_ins", "main_ins", t.ci_write)
            } else {
                ("main_ins", "ci_ins", t.main_write)
            };
            let ops = [(first, "ok"), ("port", first_port)];
            if phase.enforced() || direct {
                // Phase 7: the second write would land on the cluster whose copy of that table
                // is stale: GitLab's write lock refuses it.
                e.refused("", &ops, second, "err:2F002", N);
                e.enforced(LOCKED, "locked_table_write", N);
            } else {
                e.committed("", &[ops[0], ops[1], (second, "ok")], N);
                e.observed(CROSS_DB, N);
            }
            e.after(&t, &["main", "ci"]);
        }
        // The main write inside a savepoint; refused, ROLLBACK TO SAVEPOINT keeps the transaction
        // and its ci write.
        "savepoint" => {
            let before = [("ci_ins", "ok"), ("savepoint", "ok")];
            if phase.enforced() || direct {
                e.committed("", &before, N);
                e.step("main_ins", "err:2F002", N);
                e.step("rollback_to", "ok", N);
                e.step("port", t.ci_write, N);
                e.enforced(LOCKED, "locked_table_write", N);
            } else {
                e.committed("", &before, N);
                e.step("main_ins", "ok", N);
                e.step("release", "ok", N);
                e.step("port", t.ci_write, N);
                e.observed(CROSS_DB, N);
            }
            e.after(&t, &["main", "ci"]);
        }
        // `BEGIN; ci write; main write; COMMIT` as one simple Query.
        "multi_statement" => {
            if phase.enforced() || direct {
                e.step("multi", "err:2F002", N);
                e.step("rollback", "ok", N);
                e.enforced(LOCKED, "locked_table_write", N);
            } else {
                e.step("multi", "ok", N);
                e.observed(CROSS_DB, N);
            }
            e.after(&t, &["main", "ci"]);
        }
        "cross_join" => {
            if phase.enforced() {
                e.refused("", &[], "join_txn", "err:0A000", N / 2);
                e.step("join_auto", "err:0A000", N / 2);
                e.enforced(CROSS_JOIN, "cross_join", N);
            } else {
                e.committed("", &[("join_txn", "ok")], N / 2);
                e.step("join_auto", "ok", N / 2);
                e.observed(CROSS_JOIN, N);
            }
            e.after(&t, &["main", "ci"]);
        }
        // A `ci` connection reading projects: never allowed.
        "wrong_schema_ci" => {
            if phase.enforced() {
                e.refused("", &[], "main_sel", "err:42501", N);
                e.enforced(WRONG_SCHEMA, "wrong_schema", N);
            } else {
                e.committed("", &[("main_sel", t.ci_write)], N);
                e.observed(WRONG_SCHEMA, N);
            }
            e.after(&t, &["ci"]);
        }
        // A `main` connection reading ci_builds: allowed while ci shares main (phases 1–3, as
        // GitLab's `database_tasks: false`), wrong schema from phase 4 on.
        "wrong_schema_main" => {
            if phase.enforced() {
                e.refused("", &[], "ci_sel", "err:42501", N);
                e.enforced(WRONG_SCHEMA, "wrong_schema", N);
            } else {
                e.committed("", &[("ci_sel", t.main_write)], N);
                e.observed(WRONG_SCHEMA, if phase == Phase::P1 { 0 } else { N });
            }
            e.after(&t, &["main"]);
        }
        // Prepared (Parse, Describe) and never executed: no violation happened, so none is
        // refused or counted, whatever the statements would do.
        "prepare_only" => {
            e.step("prepare_main_db", "ok", 1);
            e.step("prepare_transparent", "ok", 1);
            e.after(&t, &["main"]);
            e.no_violations();
        }
        "two_conns" => {
            e.committed("ci_", &[("ins", "ok"), ("port", t.ci_write)], N);
            e.committed("main_", &[("ins", "ok"), ("port", t.main_write)], N);
            e.no_violations();
        }
        "copy" => {
            e.committed("copy_", &[("in", "ok"), ("port", t.ci_write)], 1);
            e.committed("count_", &[("rows", "rows:3")], 1);
            e.step("copy_out", "rows:3", 1);
            e.no_violations();
        }
        "cancel" => {
            e.step("cancel_auto", "ok", 1);
            e.step("cancel_fast", "yes", 2);
            e.step("after_cancel_read", t.main_read, 1);
            e.step("cancel_ins", "ok", 1);
            e.step("cancel_txn", "ok", 1);
            e.step("cancel_rollback", "ok", 1);
            e.after(&t, &["ci"]);
            e.no_violations();
        }
        other => panic!("no expectation for scenario {other}"),
    }
    if direct {
        e.metrics.clear();
    }
    e
}

/// What is wrong with `obs` against `e`; empty when it passes.
fn judge(obs: &Observation, e: &Expect) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(fatal) = &obs.fatal {
        problems.push(format!("broke off: {fatal}"));
    }
    let show = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (step, want) in &e.steps {
        match obs.steps.get(step) {
            Some(got) if got == want => {}
            Some(got) => problems.push(format!("{step}: {} (want {})", show(got), show(want))),
            None => problems.push(format!("{step}: never ran (want {})", show(want))),
        }
    }
    for (step, got) in &obs.steps {
        // BEGIN is a step of its own only where the driver sends it on its own.
        let harmless = step.ends_with("begin") && got.keys().all(|o| o == "ok");
        if !e.steps.contains_key(step) && !harmless {
            problems.push(format!("{step}: {} (unexpected)", show(got)));
        }
    }
    for (name, labels, want) in &e.metrics {
        let got = obs.metric(name, labels);
        if (got - want).abs() > 1e-9 {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            problems.push(format!(
                "{name}{{{}}}: +{got} (want +{want})",
                labels.join(",")
            ));
        }
    }
    if !problems.is_empty() && !obs.errors.is_empty() {
        let errors: Vec<String> = obs
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.replace('\n', " ")))
            .collect();
        problems.push(format!("errors seen: {}", errors.join(" | ")));
    }
    problems
}

/// A marker prefix unique to this test run, so rows of earlier runs never count.
fn run_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!(
        "r{}x{nanos}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The database for the direct check: the GitLab tables with triggers that refuse the writes
/// phase 7 refuses in the cross-database scenarios, as GitLab's write locks do (SQLSTATE 2F002).
const DIRECT_DB: &str = "drivers_direct";
const DIRECT_TRIGGERS: &str = r#"
SET ROLE gitlab;
CREATE FUNCTION drivers_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.name LIKE '%-' || TG_ARGV[0] || '-%' AND NEW.name NOT LIKE '%-after-%' THEN
    RAISE EXCEPTION USING ERRCODE = '2F002',
      MESSAGE = format('Table: "%s" is write protected within this Gitlab database.', TG_TABLE_NAME);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER drivers_refuse BEFORE INSERT ON projects
  FOR EACH ROW EXECUTE FUNCTION drivers_refuse('cross\_db\_ci\_main');
CREATE TRIGGER drivers_refuse_savepoint BEFORE INSERT ON projects
  FOR EACH ROW EXECUTE FUNCTION drivers_refuse('savepoint');
CREATE TRIGGER drivers_refuse_multi BEFORE INSERT ON projects
  FOR EACH ROW EXECUTE FUNCTION drivers_refuse('multi\_statement');
CREATE TRIGGER drivers_refuse BEFORE INSERT ON ci_builds
  FOR EACH ROW EXECUTE FUNCTION drivers_refuse('cross\_db\_main\_ci');
RESET ROLE;
"#;

fn direct_database(topo: &Topology) {
    static CREATED: OnceLock<()> = OnceLock::new();
    CREATED.get_or_init(|| {
        let main = topo.main_primary();
        topo.psql(
            main,
            "postgres",
            &format!("CREATE DATABASE {DIRECT_DB} OWNER gitlab"),
        );
        topo.psql_script(main, DIRECT_DB, include_str!("fixtures/gitlab.sql"));
        topo.psql_script(main, DIRECT_DB, DIRECT_TRIGGERS);
    });
}

/// Runs `driver`'s whole plan in `phase` and checks every (mode, scenario).
fn conformance(driver: Driver, phase: Phase) {
    let topo = if phase == Phase::P7 {
        promoted()
    } else {
        topology()
    };
    let run = run_id();
    let plan = driver.plan();
    let plan_env: Vec<String> = plan
        .iter()
        .map(|(mode, scenarios)| format!("{mode}={}", scenarios.join(",")))
        .collect();
    let nodes: Vec<String> = topo
        .nodes()
        .into_iter()
        .map(|n| format!("{}={}", n.name(), topo.port(n)))
        .collect();

    let proxy = match phase {
        Phase::Direct => {
            direct_database(topo);
            None
        }
        Phase::P1 => Some(Proxy::with(topo, |c| c.phase(1))),
        Phase::P4 => Some(Proxy::with(topo, |c| c.phase(4))),
        Phase::P7 => Some(Proxy::with(topo, |c| c.phase(7))),
    };
    let mut cmd = driver.command(topo);
    cmd.env("PGD_HOST", "127.0.0.1")
        .env("PGD_USER", GITLAB.0)
        .env("PGD_PASSWORD", GITLAB.1)
        .env("PGD_NODES", nodes.join(","))
        .env("PGD_RUN", &run)
        .env("PGD_PLAN", plan_env.join(";"))
        .env("PGD_SCENARIO_TIMEOUT", SCENARIO_LIMIT_SECS.to_string());
    match &proxy {
        Some(proxy) => {
            let metrics = proxy.metrics_port().expect("metrics_listen configured");
            cmd.env("PGD_PORT", proxy.port().to_string())
                .env("PGD_DB", DATABASE)
                .env("PGD_DB_MAIN", "main")
                .env("PGD_DB_CI", "ci")
                .env(
                    "PGD_METRICS_URL",
                    format!("http://127.0.0.1:{metrics}/metrics"),
                );
        }
        None => {
            cmd.env("PGD_PORT", topo.main_primary().to_string())
                .env("PGD_DB", DIRECT_DB)
                .env("PGD_DB_MAIN", DIRECT_DB)
                .env("PGD_DB_CI", DIRECT_DB)
                .env("PGD_METRICS_URL", "");
        }
    }
    let out = run_driver(&mut cmd, DRIVER_LIMIT);

    let title = format!("{} {}", driver.name(), phase.label());
    let mut failures = Vec::new();
    let mut table = format!("[drivers] {title}: {:.1}s\n", out.secs);
    for (mode, scenarios) in &plan {
        for scenario in scenarios {
            let found = out
                .observations
                .iter()
                .find(|o| o.mode == *mode && o.scenario == *scenario);
            let problems = match found {
                Some(obs) => judge(obs, &expect(phase, scenario)),
                None => vec!["no result: the program stopped before this scenario".into()],
            };
            let verdict = if problems.is_empty() { "pass" } else { "FAIL" };
            let _ = writeln!(
                table,
                "[drivers] {title} | {mode:<14} | {scenario:<17} | {verdict} | {}",
                problems.join("; ")
            );
            if !problems.is_empty() {
                failures.push(format!("{mode}/{scenario}: {}", problems.join("; ")));
            }
        }
    }
    if phase == Phase::P7 {
        failures.extend(split_brain(topo, &run, driver));
    }
    eprint!("{table}");
    assert!(
        failures.is_empty(),
        "{title}: {} failure(s)\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        run_summary(&out)
    );
}

/// Phase 7, checked on the servers themselves: rows this run wrote through pgdecomp must be
/// on the cluster that owns their table, and none on the other.
fn split_brain(topo: &Topology, run: &str, driver: Driver) -> Vec<String> {
    let like = format!("{run}-{}-%", driver.name());
    let names = |node: Node, table: &str| {
        topo.psql(
            topo.port(node),
            DATABASE,
            &format!(
                "select coalesce(string_agg(name, ' ' order by name), '') from {table} \
                 where name like '{like}'"
            ),
        )
    };
    let mut failures = Vec::new();
    for (node, table) in [
        (Node::MainPrimary, "ci_builds"),
        (Node::CiPrimary, "projects"),
    ] {
        let strays = names(node, table);
        if strays.is_empty() {
            continue;
        }
        // Names are RUN-DRIVER-MODE-SCENARIO-I: count the strays per mode and scenario.
        let prefix = format!("{run}-{}-", driver.name());
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for name in strays.split(' ') {
            let rest = name.strip_prefix(&prefix).unwrap_or(name);
            let mut parts = rest.splitn(3, '-');
            let (mode, scenario) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            *per.entry(format!("{mode}/{scenario}")).or_default() += 1;
        }
        let per: Vec<String> = per.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        failures.push(format!(
            "split brain: rows of {table} written on {}: {}",
            node.name(),
            per.join(", ")
        ));
    }
    for (node, table) in [
        (Node::MainPrimary, "projects"),
        (Node::CiPrimary, "ci_builds"),
    ] {
        if names(node, table).is_empty() {
            failures.push(format!(
                "no row of {table} reached {} (its owner)",
                node.name()
            ));
        }
    }
    failures
}

fn run_summary(out: &DriverRun) -> String {
    let status = match out.status {
        Some(s) => s.to_string(),
        None => format!("killed after {DRIVER_LIMIT:?}"),
    };
    format!(
        "--- driver program: {status}, {:.1}s ---\n{}\n--- its stderr (tail) ---\n{}",
        out.secs,
        out.garbage.join("\n"),
        out.stderr_tail(40)
    )
}

macro_rules! conformance_tests {
    ($($name:ident: $driver:expr, $phase:expr;)*) => {
        $(
            #[test]
            fn $name() {
                conformance($driver, $phase);
            }
        )*
    };
}

conformance_tests! {
    psycopg_direct_postgres: Driver::Psycopg, Phase::Direct;
    psycopg_phase_1: Driver::Psycopg, Phase::P1;
    psycopg_phase_4: Driver::Psycopg, Phase::P4;
    psycopg_phase_7: Driver::Psycopg, Phase::P7;
    asyncpg_direct_postgres: Driver::Asyncpg, Phase::Direct;
    asyncpg_phase_1: Driver::Asyncpg, Phase::P1;
    asyncpg_phase_4: Driver::Asyncpg, Phase::P4;
    asyncpg_phase_7: Driver::Asyncpg, Phase::P7;
    node_direct_postgres: Driver::NodePg, Phase::Direct;
    node_phase_1: Driver::NodePg, Phase::P1;
    node_phase_4: Driver::NodePg, Phase::P4;
    node_phase_7: Driver::NodePg, Phase::P7;
    jdbc_direct_postgres: Driver::Jdbc, Phase::Direct;
    jdbc_phase_1: Driver::Jdbc, Phase::P1;
    jdbc_phase_4: Driver::Jdbc, Phase::P4;
    jdbc_phase_7: Driver::Jdbc, Phase::P7;
    ruby_direct_postgres: Driver::Ruby, Phase::Direct;
    ruby_phase_1: Driver::Ruby, Phase::P1;
    ruby_phase_4: Driver::Ruby, Phase::P4;
    ruby_phase_7: Driver::Ruby, Phase::P7;
}
