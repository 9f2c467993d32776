//! Real PostgreSQL servers for integration tests: a main primary, optionally with a replica and
//! a CI standby cluster (standby leader + cascading replica), all in one temp dir.
//!
//! Every wait is bounded by [`BOUND`]; every server is stopped by `Drop` or, when the test
//! process dies or the topology lives in a `static`, by a detached watchdog shell.

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The application database every topology creates.
pub const DATABASE: &str = "gitlabhq_production";
/// The application login (SCRAM) on the servers.
pub const APP_USER: &str = "gitlab";
pub const APP_PASSWORD: &str = "gitlab";
/// Upper bound for every wait in the harness.
pub const BOUND: Duration = Duration::from_secs(30);

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const SUPERUSER: &str = "postgres";
const CONF: &str = include_str!("../fixtures/postgresql.conf");
const HBA: &str = include_str!("../fixtures/pg_hba.conf");
const ROLES_SQL: &str = include_str!("../fixtures/roles.sql");
const GITLAB_SQL: &str = include_str!("../fixtures/gitlab.sql");

/// Which servers a topology runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One main primary.
    MainOnly,
    /// Main primary + replica, CI standby leader streaming from the main primary, and a
    /// cascading replica streaming from the standby leader.
    Full,
}

/// One server of a topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    MainPrimary,
    MainReplica,
    /// The CI standby leader until [`Topology::promote_ci`], then the CI primary.
    CiPrimary,
    /// Cascading replica of [`Node::CiPrimary`].
    CiReplica,
}

impl Node {
    pub const ALL: [Node; 4] = [
        Node::MainPrimary,
        Node::MainReplica,
        Node::CiPrimary,
        Node::CiReplica,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Node::MainPrimary => "main_primary",
            Node::MainReplica => "main_replica",
            Node::CiPrimary => "ci_primary",
            Node::CiReplica => "ci_replica",
        }
    }
}

/// Which server processes [`Topology::kill_backends`] terminates.
#[derive(Clone, Copy, Debug)]
pub enum Backend<'a> {
    AppName(&'a str),
    Pid(i32),
}

struct Server {
    node: Node,
    port: u16,
    data: PathBuf,
    log: PathBuf,
}

/// A set of running PostgreSQL servers; dropping it stops them and removes their files.
pub struct Topology {
    kind: Kind,
    root: PathBuf,
    servers: Vec<Server>,
    promoted: AtomicBool,
    temp_dirs: AtomicUsize,
    watchdog: Mutex<Option<Child>>,
}

impl Topology {
    /// Starts the servers of `kind` with the GitLab fixture loaded and replicated.
    pub fn start(kind: Kind) -> Topology {
        let started = Instant::now();
        let root = new_root();
        let mut topo = Topology {
            kind,
            root: root.clone(),
            servers: Vec::new(),
            promoted: AtomicBool::new(false),
            temp_dirs: AtomicUsize::new(0),
            watchdog: Mutex::new(Some(spawn_watchdog(&root))),
        };
        topo.init_primary();
        if kind == Kind::Full {
            let main = topo.main_primary();
            topo.add_replica(Node::MainReplica, main);
            topo.add_replica(Node::CiPrimary, main);
            let ci = topo.ci_primary();
            topo.add_replica(Node::CiReplica, ci);
            topo.sync_replicas();
        }
        eprintln!(
            "[harness] {kind:?} topology up in {:.1}s under {} ({})",
            started.elapsed().as_secs_f64(),
            topo.root.display(),
            topo.servers
                .iter()
                .map(|s| format!("{}={}", s.node.name(), s.port))
                .collect::<Vec<_>>()
                .join(" ")
        );
        topo
    }

    /// One topology per kind per test binary; the watchdog stops it when the binary exits.
    pub fn shared(kind: Kind) -> &'static Topology {
        static MAIN_ONLY: OnceLock<Topology> = OnceLock::new();
        static FULL: OnceLock<Topology> = OnceLock::new();
        let cell = match kind {
            Kind::MainOnly => &MAIN_ONLY,
            Kind::Full => &FULL,
        };
        cell.get_or_init(|| Topology::start(kind))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn main_primary(&self) -> u16 {
        self.port(Node::MainPrimary)
    }

    pub fn main_replica(&self) -> u16 {
        self.port(Node::MainReplica)
    }

    /// The CI standby leader (the CI primary after [`Topology::promote_ci`]).
    pub fn ci_primary(&self) -> u16 {
        self.port(Node::CiPrimary)
    }

    pub fn ci_replica(&self) -> u16 {
        self.port(Node::CiReplica)
    }

    /// The port of `node`; panics when this topology does not run it.
    pub fn port(&self, node: Node) -> u16 {
        self.server(node).port
    }

    /// The nodes this topology runs.
    pub fn nodes(&self) -> Vec<Node> {
        self.servers.iter().map(|s| s.node).collect()
    }

    /// The Unix socket directory of the server on `port`, where the superuser logs in.
    pub fn socket_dir(&self, port: u16) -> &Path {
        &self.server_by_port(port).data
    }

    /// The server log of `node`, for failure messages.
    pub fn server_log(&self, node: Node) -> String {
        std::fs::read_to_string(&self.server(node).log).unwrap_or_default()
    }

    /// A tokio-postgres config for the superuser over the server's Unix socket.
    pub fn superuser_config(&self, port: u16, db: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.socket_dir(port))
            .port(port)
            .user(SUPERUSER)
            .dbname(db)
            .connect_timeout(BOUND);
        config
    }

    /// A tokio-postgres config for `gitlab`/`gitlab` over TCP (SCRAM), as the proxy logs in.
    pub fn app_config(&self, port: u16) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(APP_USER)
            .password(APP_PASSWORD)
            .dbname(DATABASE)
            .connect_timeout(BOUND);
        config
    }

    /// Runs `sql` with psql as superuser (`-At`) and returns its trimmed output; panics on error.
    pub fn psql(&self, port: u16, db: &str, sql: &str) -> String {
        self.try_psql(port, db, sql)
            .unwrap_or_else(|err| panic!("psql on port {port} failed: {sql}\n{err}"))
    }

    /// Like [`Topology::psql`] but returns psql's stderr instead of panicking.
    pub fn try_psql(&self, port: u16, db: &str, sql: &str) -> Result<String, String> {
        let out = self.psql_command(port, db).arg("-c").arg(sql).output();
        psql_result(out)
    }

    /// Runs a multi-statement script (each statement on its own, like `psql -f`).
    pub fn psql_script(&self, port: u16, db: &str, script: &str) -> String {
        let mut child = self
            .psql_command(port, db)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(script.as_bytes())
            .expect("write psql script");
        psql_result(child.wait_with_output())
            .unwrap_or_else(|err| panic!("psql script on port {port} failed:\n{err}"))
    }

    /// Promotes the CI standby leader and waits until it accepts writes and the cascading
    /// replica streams the new timeline from it.
    pub fn promote_ci(&self) {
        let ci = self.server(Node::CiPrimary);
        run_ok(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(&ci.data)
                .args(["-w", "-t", "30", "promote"]),
            "pg_ctl promote ci_primary",
        );
        self.promoted.store(true, Ordering::SeqCst);
        wait_until("ci_primary to leave recovery after promotion", || {
            self.psql(ci.port, "postgres", "select pg_is_in_recovery()") == "f"
        });
        // A checkpoint puts a record on the new timeline for the replica to follow to.
        self.psql(ci.port, "postgres", "checkpoint");
        let row = self.psql(
            ci.port,
            "postgres",
            "select pg_current_wal_lsn(), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        );
        let (lsn, tli_hex) = row.split_once('|').expect("lsn|timeline");
        let tli = i64::from_str_radix(tli_hex, 16).expect("hex timeline");
        let check = format!(
            "select coalesce((select received_tli from pg_stat_wal_receiver), 0) = {tli} \
             and pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
        );
        let replica = self.ci_replica();
        wait_until("ci_replica to follow the promoted ci_primary", || {
            self.try_psql(replica, "postgres", &check).as_deref() == Ok("t")
        });
    }

    /// Stops `node` (fast shutdown) and waits until it is down.
    pub fn stop(&self, node: Node) {
        let server = self.server(node);
        run_ok(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(&server.data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"]),
            &format!("pg_ctl stop {}", node.name()),
        );
    }

    /// Starts a node stopped by [`Topology::stop`] and waits until it accepts connections.
    pub fn start_node(&self, node: Node) {
        self.pg_ctl_start(self.server(node));
    }

    /// Terminates matching server processes on `port` and waits for them to exit; returns how many.
    pub fn kill_backends(&self, port: u16, which: Backend<'_>) -> usize {
        let filter = match which {
            Backend::AppName(name) => format!("application_name = '{}'", name.replace('\'', "''")),
            Backend::Pid(pid) => format!("pid = {pid}"),
        };
        // The timeout argument makes pg_terminate_backend wait until the process is gone.
        let sql = format!(
            "select count(*) filter (where pg_terminate_backend(pid, 10000)) \
             from pg_stat_activity where {filter} and pid <> pg_backend_pid()"
        );
        let count = self.psql(port, "postgres", &sql);
        count.parse().expect("count of terminated backends")
    }

    /// Waits until every replica still following the main primary has replayed all its WAL.
    pub fn sync_replicas(&self) {
        let main = self.main_primary();
        let lsn = self.psql(main, "postgres", "select pg_current_wal_lsn()");
        let promoted = self.promoted.load(Ordering::SeqCst);
        for server in &self.servers {
            let follows_main = match server.node {
                Node::MainPrimary => false,
                Node::MainReplica => true,
                Node::CiPrimary | Node::CiReplica => !promoted,
            };
            if follows_main {
                self.wait_replayed(server, &lsn);
            }
        }
    }

    /// A fresh directory for a test's files, removed with the topology.
    pub fn temp_dir(&self) -> PathBuf {
        let n = self.temp_dirs.fetch_add(1, Ordering::SeqCst);
        let dir = self.root.join(format!("tmp-{n}"));
        std::fs::create_dir_all(&dir).expect("create test temp dir");
        dir
    }

    fn server(&self, node: Node) -> &Server {
        self.servers
            .iter()
            .find(|s| s.node == node)
            .unwrap_or_else(|| panic!("a {:?} topology has no {}", self.kind, node.name()))
    }

    fn server_by_port(&self, port: u16) -> &Server {
        self.servers
            .iter()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no server of this topology listens on port {port}"))
    }

    fn psql_command(&self, port: u16, db: &str) -> Command {
        let mut cmd = Command::new(format!("{PG_BIN}/psql"));
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir(port))
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", SUPERUSER, "-d", db])
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGOPTIONS", "-c statement_timeout=30s")
            .env("PGAPPNAME", "harness")
            .stdin(Stdio::null());
        cmd
    }

    fn init_primary(&mut self) {
        let server = self.new_server(Node::MainPrimary);
        run_ok(
            pg_command("initdb")
                .arg("-D")
                .arg(&server.data)
                .args(["-U", SUPERUSER, "-A", "trust", "--no-sync", "-E", "UTF8"])
                .args(["--locale", "C"]),
            "initdb main_primary",
        );
        std::fs::write(server.data.join("pg_hba.conf"), HBA).expect("write pg_hba.conf");
        append_conf(&server);
        self.pg_ctl_start(&server);
        let port = server.port;
        self.servers.push(server);
        self.psql_script(port, "postgres", ROLES_SQL);
        self.psql_script(port, DATABASE, GITLAB_SQL);
    }

    fn add_replica(&mut self, node: Node, upstream_port: u16) {
        let upstream = self.socket_dir(upstream_port).to_path_buf();
        let server = self.new_server(node);
        run_ok(
            pg_command("pg_basebackup")
                .arg("-h")
                .arg(&upstream)
                .arg("-p")
                .arg(upstream_port.to_string())
                .args(["-U", SUPERUSER, "-D"])
                .arg(&server.data)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
            &format!("pg_basebackup {}", node.name()),
        );
        append_conf(&server);
        self.pg_ctl_start(&server);
        self.servers.push(server);
    }

    fn new_server(&self, node: Node) -> Server {
        Server {
            node,
            port: free_port(),
            data: self.root.join(node.name()),
            log: self.root.join(format!("{}.log", node.name())),
        }
    }

    fn pg_ctl_start(&self, server: &Server) {
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(&server.data)
            .arg("-l")
            .arg(&server.log)
            .args(["-w", "-t", "30", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("spawn pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start {} (port {}) failed: {}\n--- server log ---\n{}",
                server.node.name(),
                server.port,
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
    }

    fn wait_replayed(&self, server: &Server, lsn: &str) {
        let check = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        let what = format!("{} to replay up to {lsn}", server.node.name());
        let deadline = Instant::now() + BOUND;
        while self.try_psql(server.port, "postgres", &check).as_deref() != Ok("t") {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {BOUND:?} waiting for {what}\n--- server log ---\n{}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for server in self.servers.iter().rev() {
            let _ = pg_command("pg_ctl")
                .arg("-D")
                .arg(&server.data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdin(Stdio::null())
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(mut watchdog) = self.watchdog.lock().ok().and_then(|mut w| w.take()) {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Polls `done` every 50 ms; panics naming `what` after [`BOUND`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        if Instant::now() > deadline {
            panic!("timed out after {BOUND:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback port nobody listens on, never handed out twice in this process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().expect("port registry");
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Whether this process runs as root, in which case servers run as the `postgres` user.
pub fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let out = Command::new("id").arg("-u").output().expect("run id -u");
        String::from_utf8_lossy(&out.stdout).trim() == "0"
    })
}

/// A PostgreSQL server binary, run as `postgres` when we are root (the server refuses root).
pub fn pg_command(bin: &str) -> Command {
    let path = format!("{PG_BIN}/{bin}");
    let mut cmd = if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", &path]);
        cmd
    } else {
        Command::new(path)
    };
    cmd.stdin(Stdio::null());
    cmd
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn psql_result(out: std::io::Result<Output>) -> Result<String, String> {
    let out = out.map_err(|e| format!("spawn psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn append_conf(server: &Server) {
    // Later settings win, so this also overrides what pg_basebackup copied from the upstream.
    let conf = format!(
        "\n# pgdecomp test harness\n{CONF}port = {}\nunix_socket_directories = '{}'\n",
        server.port,
        server.data.display()
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(server.data.join("postgresql.conf"))
        .expect("open postgresql.conf");
    file.write_all(conf.as_bytes())
        .expect("append postgresql.conf");
}

fn new_root() -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    let root = std::env::temp_dir().join(format!("pgdecomp-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("create topology root");
    if running_as_root() {
        // initdb and pg_basebackup run as postgres and create the data dirs in here.
        run_ok(
            Command::new("chown").arg("postgres:postgres").arg(&root),
            "chown topology root",
        );
    }
    root
}

/// A detached shell that outlives a killed test process and then stops the servers.
fn spawn_watchdog(root: &Path) -> Child {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        for pid_file in "$2"/*/postmaster.pid; do
            [ -f "$pid_file" ] || continue
            $4 "$3" -D "$(dirname "$pid_file")" -m immediate -w -t 30 stop >/dev/null 2>&1
        done
        rm -rf "$2"
    "#;
    let run_as = if running_as_root() {
        "runuser -u postgres --"
    } else {
        ""
    };
    detached_shell(
        script,
        "pgdecomp-watchdog",
        &[
            std::process::id().to_string(),
            root.display().to_string(),
            format!("{PG_BIN}/pg_ctl"),
            run_as.to_string(),
        ],
    )
}

/// Runs `script` in `sh` with `args` as $1…, detached: no stdio, and its own process group, so
/// a Ctrl-C to the test run does not kill a cleanup that must outlive the test process.
pub fn detached_shell(script: &str, name: &str, args: &[String]) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args(["-c", script, name])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn a detached shell")
}

/// Runs `cmd` with `stdin` fed in, killing it and panicking if it outlives `limit`.
pub fn run_bounded(cmd: &mut Command, stdin: &str, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_string();
    // Separate threads so a full pipe can never deadlock the child against us.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
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
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}
