//! Issue 10, acceptance 4: pgbench `-M simple`, `-M extended` and `-M prepared` with custom
//! scripts through pgdecomp in phases 4 and 7, with exact counts, checked on the servers.
//!
//! Two scripts, each run with a marker `:run` unique to the run (`-D run=…`), so the rows of
//! one run can be counted on each server directly (never through the proxy). Every row stores
//! `inet_server_port()` of the server that ran its INSERT, which proves where it ran.
//!
//! **Script A (good)**: a ci transaction, then a main read.
//!
//! ```text
//! BEGIN; INSERT INTO ci_builds …; END; SELECT … FROM projects WHERE id = :p;
//! ```
//!
//! The main read is *outside* the ci transaction on purpose. By `phases.md` a transaction is
//! pinned to the server of its first table statement, and a later statement that needs the
//! other group is a violation: a projects read inside a ci transaction runs on the `ci`
//! connection, which allows only ci, shared and internal schemas, so it is **wrong_schema**
//! (phase 4: observed and counted, it still runs on the main primary host; phase 7: refused
//! with 42501, because the CI primary's projects is a stale copy). A script that is good in
//! both phases therefore commits its ci write and then reads main on its own; that read is a
//! plain read outside a transaction and goes to main's read target, `main_replica`.
//! Expected in phases 4 and 7: no failed transaction, pgbench's processed count equals
//! `-c × -t`, exactly that many ci rows on the phase's ci write server (phase 4: the main
//! primary, through the `ci` pool; phase 7: the CI primary) and none on the other primary,
//! `pgdecomp_statements_total` counts exactly that many ci writes on `ci` and main reads on
//! `main_replica`, the schemas-used metric (sampled at 100 % in both phase files) the same,
//! and not one violation, refusal or (phase 4) shadow violation.
//!
//! **Script B (cross-database)**: `BEGIN; INSERT INTO ci_builds …; INSERT INTO projects …; END;`
//!
//! - Phase 4 (shipped file, every kind observed): every transaction commits; the two inserts
//!   run on the same pinned `ci` connection, on the main primary. Counted exactly once per
//!   transaction: `pgdecomp_cross_database_modification_total{gitlab_ci,gitlab_main}` and
//!   `pgdecomp_wrong_schema_total{ci,gitlab_main}` (a projects write on the `ci` connection);
//!   the phase-7 shadow counts the cross-database modification and the locked-table write that
//!   phase 7 would refuse, once per transaction each. Nothing is refused.
//! - Phase 7 (every kind enforced): the projects insert of every transaction is refused with
//!   GitLab's lock error `Table: "projects" is write protected within this Gitlab database.`
//!   (2F002, the most specific of the rules it breaks), so nothing of the run is committed
//!   anywhere: no projects row on the CI primary, no ci_builds row on the main primary (and
//!   none on the other two either). `pgdecomp_rejected_statements_total{kind="locked_table_write"}`
//!   rises by exactly the number of transactions, as do the locked-table-write,
//!   cross-database-modification and wrong-schema counters.
//!
//! **Why phase 7's script B runs as `-c N -t 1`.** pgbench 15 retries only serialization and
//! deadlock failures (`--max-tries`); any other error aborts the client ("client K script 0
//! aborted in command C query 0: …"), and its remaining transactions never run. So `-c 4 -t 25`
//! would stop after 4 refusals. With one transaction per client (100 clients), each client's
//! single transaction is refused exactly once, and the run is fully accounted for: exit status
//! 2, `0/100` processed, and exactly 100 abort lines, one per client, each at command 3 (the
//! projects insert; command 0 is `\set`) with the lock error. Any other error line fails the
//! test; in particular `prepared statement "P_1" does not exist` (a refusal that cost a
//! `-M prepared` client its statement: pgbench 15 only logs a failed prepare and then executes
//! the statement anyway) and a refusal at command 2 (the ci insert refused because an
//! extended-protocol BEGIN pinned the transaction to main). Afterwards script A runs again on
//! the same proxy and mode: the server connections and prepared statements that served the
//! refused transactions must serve good ones cleanly. pgbench runs with `-j 1` (more threads
//! interleave their stderr lines), and the phase-7 proxy gets a server connection per client
//! (see `phase_7_enforcing_proxy` for the stall pgbench's blocking prepare causes otherwise).
//!
//! **Harness check.** Before going through pgdecomp, each script runs with the same pgbench
//! arguments directly against PostgreSQL (script A on the phase's ci write server; phase 7's
//! script B on the CI primary with a trigger, limited to that baseline's marker, that raises
//! GitLab's lock error on projects). If a baseline does not give exactly the expected result,
//! the test reports a harness problem, not a proxy bug. pgdecomp's log is printed when a test
//! fails (by `Proxy`'s drop).

mod common;

use common::cluster::{Kind, Topology, APP_PASSWORD, APP_USER, DATABASE};
use common::proxy::{Proxy, ProxyConfig};
use common::scrape::{metric, metrics};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const MODES: [&str; 3] = ["simple", "extended", "prepared"];
/// `-c` and `-t` of the runs that must succeed.
const CLIENTS: u32 = 4;
const TXNS: u32 = 25;
/// Phase 7's script B: one transaction per client (see the module comment).
const REFUSED_CLIENTS: u32 = CLIENTS * TXNS;
/// Upper bound for one pgbench run (the 100-client runs take about 5 s on a loaded 2-core
/// machine, the others under 1 s). A run still going then is killed and reported as hung.
const PGBENCH_LIMIT: Duration = Duration::from_secs(30);

/// A ci transaction, then a main read outside it (the module comment says why outside).
/// Command numbers as pgbench counts them: 0 and 1 are `\set`, 2 BEGIN, 3 the insert.
const SCRIPT_A: &str = "\
\\set n random(1, 999999999999)
\\set p random(1, 5)
BEGIN;
INSERT INTO ci_builds (name, stage_id, status) VALUES (inet_server_port(), :run, :n);
END;
SELECT id, name FROM projects WHERE id = :p;
";

/// A transaction writing both databases. Commands: 0 `\set`, 1 BEGIN, 2 the ci insert,
/// 3 the projects insert, 4 END.
const SCRIPT_B: &str = "\
\\set n random(1, 999999999999)
BEGIN;
INSERT INTO ci_builds (name, stage_id, status) VALUES (inet_server_port(), :run, :n);
INSERT INTO projects (name, namespace_id) VALUES (inet_server_port(), :run);
END;
";

/// The pgbench command (0-based, `\set` included) of script B's projects insert.
const SCRIPT_B_PROJECTS_COMMAND: u32 = 3;
/// What a phase-7 refusal of that insert says (GitLab's lock_writes trigger wording).
const PROJECTS_LOCKED: &str = "Table: \"projects\" is write protected within this Gitlab database.";

const CI_DB_MOD: (&str, &str) = ("gitlab_schemas", "gitlab_ci,gitlab_main");

/// Phase 4 runs on an unpromoted topology (the CI standby replicates main).
fn phase_4_topology() -> &'static Topology {
    Topology::shared(Kind::Full)
}

/// Phase 7 needs a promoted CI cluster; promotion is irreversible, so it has its own topology.
fn promoted() -> &'static Topology {
    static PROMOTED: OnceLock<Topology> = OnceLock::new();
    PROMOTED.get_or_init(|| {
        let topo = Topology::start(Kind::Full);
        topo.promote_ci();
        topo
    })
}

/// A marker unique to one pgbench run (stored in `stage_id` / `namespace_id`), far from the
/// fixture's small ids.
fn run_id() -> i64 {
    static BASE: OnceLock<i64> = OnceLock::new();
    static SEQ: AtomicI64 = AtomicI64::new(0);
    let base = *BASE.get_or_init(|| {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros();
        i64::try_from(micros).expect("micros fit i64") * 1000
    });
    base + SEQ.fetch_add(1, Ordering::SeqCst)
}

fn shipped_phase(n: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("phases/phase-{n}.toml"))
}

/// Every kind in `[violations]` set to `mode` (same edit as tests/phase_routing.rs).
fn violations(text: &str, mode: &str) -> String {
    let mut out = String::new();
    let mut in_violations = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_violations = line == "[violations]";
        }
        match line.split_once(" = ") {
            Some((key, _)) if in_violations && !key.starts_with('#') => {
                let _ = write!(out, "{key} = \"{mode}\"");
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// pgdecomp in phase 7 with every violation kind enforced, whatever the shipped file says.
fn phase_7_enforcing_proxy(topo: &Topology) -> Proxy {
    let text = std::fs::read_to_string(shipped_phase(7)).expect("read shipped phase-7.toml");
    let edited = violations(&text, "enforce");
    for kind in [
        "cross_join",
        "cross_database_modification",
        "wrong_schema",
        "locked_table_write",
    ] {
        assert!(
            edited.contains(&format!("{kind} = \"enforce\"")),
            "phase-7.toml layout changed, {kind} not enforced:\n{edited}"
        );
    }
    let path = topo.temp_dir().join("phase-7-enforce.toml");
    std::fs::write(&path, edited).expect("write enforcing phase file");
    // A server connection per pgbench client. pgbench 15 prepares (`-M prepared`) with a
    // blocking PQprepare inside its event loop; with fewer pooled connections than clients,
    // one client's prepare waiting for a connection blocks the thread that the clients holding
    // them need to finish, and the run stalls until query_wait_timeout whatever the proxy does.
    let config = ProxyConfig::new(topo)
        .phase(7)
        .pool_size(REFUSED_CLIENTS)
        .build();
    let shipped = format!("phase_file = \"{}\"", shipped_phase(7).display());
    assert!(
        config.contains(&shipped),
        "config layout changed:\n{config}"
    );
    Proxy::start(&config.replace(&shipped, &format!("phase_file = \"{}\"", path.display())))
}

/// One pgbench run: what it printed, its exit status and the counts it reported.
struct Bench {
    label: String,
    /// `None` when pgbench was killed at [`PGBENCH_LIMIT`].
    status: Option<i32>,
    hung: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// A client abort line: `pgbench: error: client K script 0 aborted in command C query 0: ERROR:  M`.
#[derive(Debug)]
struct Abort {
    client: u32,
    command: u32,
    message: String,
}

impl Bench {
    /// `number of transactions actually processed: X/Y` as (X, Y).
    fn processed(&self) -> Option<(u64, u64)> {
        let rest = self
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))?;
        let (done, planned) = rest.trim().split_once('/')?;
        Some((done.parse().ok()?, planned.parse().ok()?))
    }

    /// `number of failed transactions: F (…)`.
    fn failed(&self) -> Option<u64> {
        let rest = self
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of failed transactions: "))?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// The client-abort lines on stderr.
    fn aborts(&self) -> Vec<Abort> {
        self.stderr.lines().filter_map(parse_abort).collect()
    }

    /// `pgbench: error:` lines that are neither client aborts nor the closing "Run was aborted"
    /// (e.g. a failed prepare, which pgbench 15 only logs).
    fn other_errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("pgbench: error:") || l.starts_with("pgbench: fatal:"))
            .filter(|l| parse_abort(l).is_none())
            .filter(|l| !l.contains("Run was aborted; the above results are incomplete."))
            .collect()
    }

    fn report(&self) -> String {
        format!(
            "{} (exit {:?}{}, {:.2}s):\n--- stdout ---\n{}--- stderr (first 40 lines) ---\n{}",
            self.label,
            self.status,
            if self.hung { ", killed: hung" } else { "" },
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr.lines().take(40).collect::<Vec<_>>().join("\n")
        )
    }
}

fn parse_abort(line: &str) -> Option<Abort> {
    let rest = line.strip_prefix("pgbench: error: client ")?;
    let (client, rest) = rest.split_once(' ')?;
    let (_, rest) = rest.split_once("aborted in command ")?;
    let (command, rest) = rest.split_once(' ')?;
    let (_, message) = rest.split_once(": ERROR:  ")?;
    Some(Abort {
        client: client.parse().ok()?,
        command: command.parse().ok()?,
        message: message.trim().to_string(),
    })
}

/// Runs `script` with pgbench as `gitlab` over TCP to `port` (pgdecomp or a server directly).
#[allow(clippy::too_many_arguments)]
fn pgbench(
    label: &str,
    port: u16,
    dir: &Path,
    script: &str,
    mode: &str,
    clients: u32,
    txns: u32,
    run: i64,
) -> Bench {
    let file = dir.join(format!("script-{run}.sql"));
    std::fs::write(&file, script).expect("write pgbench script");
    let started = Instant::now();
    let (out, hung) = run_limited(
        Command::new(format!("{PG_BIN}/pgbench"))
            .args(["-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["-U", APP_USER, "-n", "--failures-detailed", "-M", mode])
            .arg("-c")
            .arg(clients.to_string())
            // One thread: with more, pgbench's threads interleave their stderr lines, and the
            // abort lines could not be counted.
            .args(["-j", "1"])
            .arg("-t")
            .arg(txns.to_string())
            .arg("-D")
            .arg(format!("run={run}"))
            .arg("-f")
            .arg(&file)
            .arg(DATABASE)
            .env("PGPASSWORD", APP_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10"),
        PGBENCH_LIMIT,
    );
    let bench = Bench {
        label: format!("{label}: pgbench -M {mode} -c {clients} -t {txns} (run {run})"),
        status: out.status.code(),
        hung,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    eprintln!(
        "[pgbench] {} -> {}exit {:?}, processed {:?}, failed {:?}, {} aborts, {:.2}s",
        bench.label,
        if hung { "HUNG, killed, " } else { "" },
        bench.status,
        bench.processed(),
        bench.failed(),
        bench.aborts().len(),
        bench.elapsed.as_secs_f64()
    );
    bench
}

/// Runs `cmd` to its end or kills it after `limit`; the output so far and whether it was
/// killed. (`run_bounded` panics instead, which would hide the other modes' results.)
fn run_limited(cmd: &mut Command, limit: Duration) -> (Output, bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    // Separate readers so a full pipe can never block the child.
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pgbench") {
            break status;
        }
        if Instant::now() > deadline {
            hung = true;
            let _ = child.kill();
            break child.wait().expect("reap killed pgbench");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    };
    (output, hung)
}

/// `count(*)` of `sql`'s rows on the server at `port` (as superuser over its socket).
fn count(topo: &Topology, port: u16, sql: &str) -> i64 {
    let out = topo.psql(port, DATABASE, &format!("select count(*) from ({sql}) q"));
    out.parse()
        .unwrap_or_else(|_| panic!("count on port {port}: {sql}: {out}"))
}

/// Rows of one run in `table` on the server at `port`: (all, stored by that server itself).
fn rows_of_run(topo: &Topology, port: u16, table: &str, run: i64) -> (i64, i64) {
    let marker = match table {
        "ci_builds" => "stage_id",
        "projects" => "namespace_id",
        other => panic!("no marker column for {other}"),
    };
    let all = count(
        topo,
        port,
        &format!("select 1 from {table} where {marker} = {run}"),
    );
    let here = count(
        topo,
        port,
        &format!("select 1 from {table} where {marker} = {run} and name = '{port}'"),
    );
    (all, here)
}

/// Distinct random values among a run's ci_builds rows (one per transaction).
fn distinct_ci_rows(topo: &Topology, port: u16, run: i64) -> i64 {
    count(
        topo,
        port,
        &format!("select distinct status from ci_builds where stage_id = {run}"),
    )
}

/// What went wrong, per mode, collected so one failing mode does not hide the others.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.0
                .push(format!("{what}: got {got:?}, expected {want:?}"));
        }
    }

    fn check(&mut self, what: &str, ok: bool, detail: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("{what}: {}", detail()));
        }
    }

    /// Panics with every problem and the pgbench outputs; the proxy log follows (Proxy's drop).
    fn finish(self, test: &str, benches: &[Bench]) {
        if self.0.is_empty() {
            return;
        }
        let outputs: Vec<String> = benches.iter().map(Bench::report).collect();
        panic!(
            "{test}: {} problem(s):\n  - {}\n\n=== pgbench outputs ===\n{}",
            self.0.len(),
            self.0.join("\n  - "),
            outputs.join("\n")
        );
    }
}

/// A metrics scrape, for deltas around one run.
struct Scrape(String);

impl Scrape {
    fn of(proxy: &Proxy) -> Scrape {
        Scrape(metrics(proxy))
    }

    fn delta(&self, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&after.0, name, labels) - metric(&self.0, name, labels)
    }
}

fn expect_finished(p: &mut Problems, mode: &str, b: &Bench) {
    p.check(&format!("[-M {mode}] {}", b.label), !b.hung, || {
        format!("hung: killed after {PGBENCH_LIMIT:?}")
    });
}

/// Checks that a run which must succeed did: exit 0, every transaction processed, no failure,
/// no error line.
fn expect_clean_run(p: &mut Problems, mode: &str, b: &Bench, planned: u64) {
    expect_finished(p, mode, b);
    p.eq(
        &format!("[-M {mode}] {} exit status", b.label),
        b.status,
        Some(0),
    );
    p.eq(
        &format!("[-M {mode}] {} processed/planned", b.label),
        b.processed(),
        Some((planned, planned)),
    );
    p.eq(
        &format!("[-M {mode}] {} failed transactions", b.label),
        b.failed(),
        Some(0),
    );
    let aborts = b.aborts();
    p.check(
        &format!("[-M {mode}] {} client aborts", b.label),
        aborts.is_empty(),
        || format!("{} aborted, first: {:?}", aborts.len(), aborts.first()),
    );
    let other = b.other_errors();
    p.check(
        &format!("[-M {mode}] {} error lines", b.label),
        other.is_empty(),
        || format!("{other:?}"),
    );
}

/// Checks a phase-7 script B run: every client's only transaction refused at the projects
/// insert with the lock error, and nothing else.
fn expect_all_refused(p: &mut Problems, mode: &str, b: &Bench, clients: u32) {
    let what = format!("[-M {mode}] {}", b.label);
    expect_finished(p, mode, b);
    p.eq(&format!("{what} exit status"), b.status, Some(2));
    p.eq(
        &format!("{what} processed/planned"),
        b.processed(),
        Some((0, u64::from(clients))),
    );
    let aborts = b.aborts();
    let mut by_client: Vec<u32> = aborts.iter().map(|a| a.client).collect();
    by_client.sort_unstable();
    by_client.dedup();
    p.check(
        &format!("{what} one abort per client"),
        aborts.len() == clients as usize && by_client.len() == clients as usize,
        || {
            format!(
                "{} abort lines from {} distinct clients, expected {clients} from {clients}",
                aborts.len(),
                by_client.len()
            )
        },
    );
    let wrong: Vec<&Abort> = aborts
        .iter()
        .filter(|a| a.command != SCRIPT_B_PROJECTS_COMMAND || a.message != PROJECTS_LOCKED)
        .collect();
    p.check(
        &format!(
            "{what} every abort at command {SCRIPT_B_PROJECTS_COMMAND} (the projects insert) \
             with {PROJECTS_LOCKED:?}"
        ),
        wrong.is_empty(),
        || {
            let mut kinds: Vec<String> = wrong
                .iter()
                .map(|a| format!("command {}: {}", a.command, a.message))
                .collect();
            kinds.sort();
            kinds.dedup();
            format!("{} of {} differ: {kinds:?}", wrong.len(), aborts.len())
        },
    );
    let other = b.other_errors();
    p.check(
        &format!("{what} other error lines"),
        other.is_empty(),
        || format!("{} lines, first: {:?}", other.len(), other.first()),
    );
    p.check(
        &format!("{what} lost prepared statements"),
        !b.stderr.contains("does not exist"),
        || {
            let line = b
                .stderr
                .lines()
                .find(|l| l.contains("does not exist"))
                .unwrap_or_default();
            format!("pgbench saw: {line}")
        },
    );
}

/// Script A directly against PostgreSQL: `server` must take every row, in every mode.
fn baseline_a(topo: &Topology, server: u16, dir: &Path, mode: &str, benches: &mut Vec<Bench>) {
    let run = run_id();
    let b = pgbench(
        "baseline A direct to PostgreSQL",
        server,
        dir,
        SCRIPT_A,
        mode,
        CLIENTS,
        TXNS,
        run,
    );
    let mut harness = Problems::default();
    let n = u64::from(CLIENTS * TXNS);
    expect_clean_run(&mut harness, mode, &b, n);
    harness.eq(
        "rows on the server",
        rows_of_run(topo, server, "ci_builds", run),
        (n as i64, n as i64),
    );
    benches.push(b);
    if !harness.0.is_empty() {
        harness.0.insert(
            0,
            "HARNESS PROBLEM: script A fails directly against PostgreSQL".into(),
        );
        harness.finish("baseline A", benches);
    }
}

/// The ci write server of `phase` and the other primary (where no ci row may land).
fn ci_write_server(topo: &Topology, phase: u32) -> (u16, &'static str) {
    if phase == 7 {
        (topo.ci_primary(), "ci_primary")
    } else {
        (topo.main_primary(), "main_primary")
    }
}

/// Script A through pgdecomp in `phase`, every mode.
fn script_a(topo: &Topology, proxy: &Proxy, phase: u32, test: &str) {
    let dir = topo.temp_dir();
    let (ci_server, ci_name) = ci_write_server(topo, phase);
    let n = u64::from(CLIENTS * TXNS);
    let mut p = Problems::default();
    let mut benches = Vec::new();
    for mode in MODES {
        baseline_a(topo, ci_server, &dir, mode, &mut benches);
        let run = run_id();
        let before = Scrape::of(proxy);
        let b = pgbench(
            &format!("phase {phase} script A via pgdecomp"),
            proxy.port(),
            &dir,
            SCRIPT_A,
            mode,
            CLIENTS,
            TXNS,
            run,
        );
        let after = Scrape::of(proxy);
        expect_clean_run(&mut p, mode, &b, n);
        let done = b.processed().map_or(0, |(done, _)| done) as i64;
        let tag = format!("[-M {mode}] phase {phase} script A");

        // On the servers: every committed transaction left one row, on the ci write server.
        p.eq(
            &format!(
                "{tag}: ci_builds rows of the run on {ci_name} (all, inserted there) vs pgbench's count"
            ),
            rows_of_run(topo, ci_server, "ci_builds", run),
            (done, done),
        );
        p.eq(
            &format!("{tag}: distinct transactions' rows on {ci_name}"),
            distinct_ci_rows(topo, ci_server, run),
            done,
        );
        if phase == 7 {
            p.eq(
                &format!("{tag}: ci_builds rows of the run on main_primary (stale copy)"),
                rows_of_run(topo, topo.main_primary(), "ci_builds", run),
                (0, 0),
            );
        }

        // In pgdecomp's counters: each execution once, on the right target, no violation.
        let d = |name: &str, labels: &[(&str, &str)]| before.delta(&after, name, labels);
        let nf = done as f64;
        for (what, name, labels, want) in [
            (
                "ci writes on `ci`",
                "pgdecomp_statements_total",
                &[("db_config_name", "ci"), ("kind", "write")][..],
                nf,
            ),
            (
                "writes on `main`",
                "pgdecomp_statements_total",
                &[("db_config_name", "main"), ("kind", "write")],
                0.0,
            ),
            (
                "main reads on `main_replica`",
                "pgdecomp_statements_total",
                &[("db_config_name", "main_replica"), ("kind", "read")],
                nf,
            ),
            (
                "schemas used {gitlab_ci, ci}",
                "gitlab_database_decomposition_gitlab_schemas_used_total",
                &[("gitlab_schemas", "gitlab_ci"), ("db_config_name", "ci")],
                nf,
            ),
            (
                "schemas used {gitlab_main, main_replica}",
                "gitlab_database_decomposition_gitlab_schemas_used_total",
                &[
                    ("gitlab_schemas", "gitlab_main"),
                    ("db_config_name", "main_replica"),
                ],
                nf,
            ),
            ("cross-joins", "pgdecomp_cross_join_total", &[], 0.0),
            (
                "cross-database modifications",
                "pgdecomp_cross_database_modification_total",
                &[],
                0.0,
            ),
            ("wrong schema", "pgdecomp_wrong_schema_total", &[], 0.0),
            (
                "locked-table writes",
                "pgdecomp_locked_table_write_total",
                &[],
                0.0,
            ),
            ("refusals", "pgdecomp_rejected_statements_total", &[], 0.0),
            (
                "shadow (phase 7) violations",
                "pgdecomp_shadow_violations_total",
                &[],
                0.0,
            ),
        ] {
            p.eq(
                &format!("{tag}: Δ {name}{labels:?} ({what})"),
                d(name, labels),
                want,
            );
        }
        benches.push(b);
    }
    p.finish(test, &benches);
}

/// Acceptance 4, phase 4 (shipped file): script A commits every transaction on the `ci` pool
/// (main primary host), reads main on main_replica, and breaks no rule.
#[test]
fn phase_4_script_a_ci_transaction_then_main_read() {
    let topo = phase_4_topology();
    let proxy = Proxy::with(topo, |c| c.phase(4));
    script_a(topo, &proxy, 4, "phase_4_script_a");
}

/// Acceptance 4, phase 7 (every kind enforced): script A commits every transaction on the CI
/// primary, reads main on main_replica, and nothing is refused.
#[test]
fn phase_7_script_a_ci_transaction_then_main_read() {
    let topo = promoted();
    let proxy = phase_7_enforcing_proxy(topo);
    script_a(topo, &proxy, 7, "phase_7_script_a");
}

/// Acceptance 4, phase 4 (shipped file, observe): script B commits every transaction, both
/// inserts on the main primary, and each transaction is counted once as a cross-database
/// modification (and its projects write on the `ci` connection once as wrong schema).
#[test]
fn phase_4_script_b_cross_database_transaction_is_counted() {
    let topo = phase_4_topology();
    let main = topo.main_primary();
    let proxy = Proxy::with(topo, |c| c.phase(4));
    let dir = topo.temp_dir();
    let n = u64::from(CLIENTS * TXNS);
    let mut p = Problems::default();
    let mut benches = Vec::new();
    for mode in MODES {
        // Harness: the script commits every transaction on PostgreSQL itself.
        let run = run_id();
        let b = pgbench(
            "baseline B direct to PostgreSQL",
            main,
            &dir,
            SCRIPT_B,
            mode,
            CLIENTS,
            TXNS,
            run,
        );
        let mut harness = Problems::default();
        expect_clean_run(&mut harness, mode, &b, n);
        harness.eq(
            "baseline projects rows",
            rows_of_run(topo, main, "projects", run),
            (n as i64, n as i64),
        );
        benches.push(b);
        if !harness.0.is_empty() {
            harness.0.insert(
                0,
                "HARNESS PROBLEM: script B fails directly against PostgreSQL".into(),
            );
            harness.finish("baseline B", &benches);
        }

        let run = run_id();
        let before = Scrape::of(&proxy);
        let b = pgbench(
            "phase 4 script B via pgdecomp",
            proxy.port(),
            &dir,
            SCRIPT_B,
            mode,
            CLIENTS,
            TXNS,
            run,
        );
        let after = Scrape::of(&proxy);
        expect_clean_run(&mut p, mode, &b, n);
        let done = b.processed().map_or(0, |(done, _)| done) as i64;
        let tag = format!("[-M {mode}] phase 4 script B");
        // Observe: both inserts of every transaction ran, on the main primary (the `ci` pool's
        // host in phase 4).
        for table in ["ci_builds", "projects"] {
            p.eq(
                &format!("{tag}: {table} rows of the run on main_primary (all, inserted there)"),
                rows_of_run(topo, main, table, run),
                (done, done),
            );
        }
        p.eq(
            &format!("{tag}: distinct transactions' ci_builds rows"),
            distinct_ci_rows(topo, main, run),
            done,
        );
        let d = |name: &str, labels: &[(&str, &str)]| before.delta(&after, name, labels);
        let nf = done as f64;
        for (what, name, labels, want) in [
            (
                "one per transaction",
                "pgdecomp_cross_database_modification_total",
                &[CI_DB_MOD][..],
                nf,
            ),
            (
                "no other schemas",
                "pgdecomp_cross_database_modification_total",
                &[],
                nf,
            ),
            (
                "the projects insert on the pinned `ci` connection",
                "pgdecomp_wrong_schema_total",
                &[("db_config_name", "ci"), ("gitlab_schemas", "gitlab_main")],
                nf,
            ),
            (
                "nothing else on a wrong connection",
                "pgdecomp_wrong_schema_total",
                &[],
                nf,
            ),
            (
                "ci writes on `ci`",
                "pgdecomp_statements_total",
                &[("db_config_name", "ci"), ("kind", "write")],
                2.0 * nf,
            ),
            (
                "no locks before phase 7",
                "pgdecomp_locked_table_write_total",
                &[],
                0.0,
            ),
            ("no cross-join", "pgdecomp_cross_join_total", &[], 0.0),
            (
                "observe refuses nothing",
                "pgdecomp_rejected_statements_total",
                &[],
                0.0,
            ),
            (
                "phase 7 would refuse: cross-database modification",
                "pgdecomp_shadow_violations_total",
                &[("kind", "cross_database_modification")],
                nf,
            ),
            (
                "phase 7 would refuse: locked-table write",
                "pgdecomp_shadow_violations_total",
                &[("kind", "locked_table_write")],
                nf,
            ),
        ] {
            p.eq(
                &format!("{tag}: Δ {name}{labels:?} ({what})"),
                d(name, labels),
                want,
            );
        }
        benches.push(b);
    }
    p.finish("phase_4_script_b", &benches);
}

/// Acceptance 4, phase 7 (every kind enforced): every script-B transaction is refused at its
/// projects insert, counted exactly once, and leaves no row on either primary; the same proxy
/// then runs script A cleanly.
#[test]
fn phase_7_script_b_cross_database_transaction_is_refused() {
    let topo = promoted();
    let (main, ci) = (topo.main_primary(), topo.ci_primary());
    let dir = topo.temp_dir();
    let n = u64::from(REFUSED_CLIENTS);

    // Harness: GitLab's lock trigger on the CI primary's projects, limited to the baseline's
    // marker, shows what pgbench prints when exactly this statement fails in each mode.
    let baseline_run = run_id();
    topo.psql_script(
        ci,
        DATABASE,
        &format!(
            "create function pgbench_modes_lock() returns trigger language plpgsql as $$ \
             begin raise exception using errcode = '2F002', \
             message = format('Table: \"%s\" is write protected within this Gitlab database.', \
             tg_table_name); end $$;\n\
             create trigger pgbench_modes_lock before insert on projects for each row \
             when (new.namespace_id = {baseline_run}) execute function pgbench_modes_lock();\n"
        ),
    );
    let mut benches = Vec::new();
    let mut harness = Problems::default();
    for mode in MODES {
        let b = pgbench(
            "baseline B direct to the CI primary with a lock trigger",
            ci,
            &dir,
            SCRIPT_B,
            mode,
            REFUSED_CLIENTS,
            1,
            baseline_run,
        );
        expect_all_refused(&mut harness, mode, &b, REFUSED_CLIENTS);
        benches.push(b);
    }
    harness.eq(
        "baseline ci_builds rows (rolled back)",
        rows_of_run(topo, ci, "ci_builds", baseline_run).0,
        0,
    );
    topo.psql_script(
        ci,
        DATABASE,
        "drop trigger pgbench_modes_lock on projects;\ndrop function pgbench_modes_lock();\n",
    );
    if !harness.0.is_empty() {
        harness.0.insert(
            0,
            "HARNESS PROBLEM: a refused projects insert does not look as expected directly \
             against PostgreSQL"
                .into(),
        );
        harness.finish("baseline B (phase 7)", &benches);
    }

    let proxy = phase_7_enforcing_proxy(topo);
    let mut p = Problems::default();
    for mode in MODES {
        let run = run_id();
        let before = Scrape::of(&proxy);
        let b = pgbench(
            "phase 7 script B via pgdecomp",
            proxy.port(),
            &dir,
            SCRIPT_B,
            mode,
            REFUSED_CLIENTS,
            1,
            run,
        );
        let after = Scrape::of(&proxy);
        expect_all_refused(&mut p, mode, &b, REFUSED_CLIENTS);
        let tag = format!("[-M {mode}] phase 7 script B");

        // On the servers: nothing of a refused transaction was committed anywhere.
        for (server, name, table, why) in [
            (
                ci,
                "ci_primary",
                "projects",
                "main data written on CI (split brain)",
            ),
            (
                main,
                "main_primary",
                "ci_builds",
                "ci data written on main (split brain)",
            ),
            (
                ci,
                "ci_primary",
                "ci_builds",
                "the refused transaction must roll back",
            ),
            (
                main,
                "main_primary",
                "projects",
                "the refused transaction must roll back",
            ),
        ] {
            p.eq(
                &format!("{tag}: {table} rows of the run on {name} ({why})"),
                rows_of_run(topo, server, table, run).0,
                0,
            );
        }

        // In pgdecomp's counters: each refused execution exactly once.
        let d = |name: &str, labels: &[(&str, &str)]| before.delta(&after, name, labels);
        let nf = n as f64;
        for (what, name, labels, want) in [
            (
                "the 2F002 refusals",
                "pgdecomp_rejected_statements_total",
                &[("kind", "locked_table_write")][..],
                nf,
            ),
            (
                "projects written on `ci`",
                "pgdecomp_locked_table_write_total",
                &[("db_config_name", "ci"), ("gitlab_schema", "gitlab_main")],
                nf,
            ),
            (
                "nothing else locked",
                "pgdecomp_locked_table_write_total",
                &[],
                nf,
            ),
            (
                "one per transaction",
                "pgdecomp_cross_database_modification_total",
                &[CI_DB_MOD],
                nf,
            ),
            (
                "projects on the `ci` connection",
                "pgdecomp_wrong_schema_total",
                &[("db_config_name", "ci"), ("gitlab_schemas", "gitlab_main")],
                nf,
            ),
            (
                "nothing else on a wrong connection",
                "pgdecomp_wrong_schema_total",
                &[],
                nf,
            ),
            ("no cross-join", "pgdecomp_cross_join_total", &[], 0.0),
        ] {
            p.eq(
                &format!("{tag}: Δ {name}{labels:?} ({what})"),
                d(name, labels),
                want,
            );
        }
        // The same statement also breaks the cross-database and wrong-schema rules; whether
        // those kinds are labelled as refused too is a design choice, but never more than once
        // per refused execution.
        for kind in ["cross_database_modification", "wrong_schema", "cross_join"] {
            let got = d("pgdecomp_rejected_statements_total", &[("kind", kind)]);
            p.check(
                &format!("{tag}: Δ pgdecomp_rejected_statements_total{{kind={kind}}}"),
                got == 0.0 || (got == nf && kind != "cross_join"),
                || format!("{got}, expected 0 or {nf}"),
            );
        }
        benches.push(b);

        // The server connections and prepared statements that served the refusals must serve
        // good transactions: script A on the same proxy, same mode.
        let good = run_id();
        let b = pgbench(
            "phase 7 script A via pgdecomp after the refusals",
            proxy.port(),
            &dir,
            SCRIPT_A,
            mode,
            CLIENTS,
            TXNS,
            good,
        );
        expect_clean_run(&mut p, mode, &b, u64::from(CLIENTS * TXNS));
        let done = b.processed().map_or(0, |(done, _)| done) as i64;
        p.eq(
            &format!("[-M {mode}] script A after the refusals: ci_builds rows on ci_primary"),
            rows_of_run(topo, ci, "ci_builds", good),
            (done, done),
        );
        benches.push(b);
    }
    p.finish("phase_7_script_b", &benches);
}
