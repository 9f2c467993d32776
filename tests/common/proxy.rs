//! The pgdecomp binary as a child process: config and auth file in a temp dir, bounded
//! start-up wait, captured log, and a kill on drop (or by a watchdog if the test dies).

use super::cluster::{free_port, Kind, Topology, BOUND, DATABASE};
use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Users in the generated auth file, as (user, password clients log in with).
pub const GITLAB: (&str, &str) = ("gitlab", "gitlab");
pub const MD5_CLIENT: (&str, &str) = ("md5client", "md5client");
pub const PLAIN_CLIENT: (&str, &str) = ("plainclient", "plainclient");
pub const ADMIN: (&str, &str) = ("admin", "admin");
/// Also server roles, so a config without `[server] user` can log in with md5 / cleartext.
pub const MD5_USER: (&str, &str) = ("md5user", "md5pass");
pub const PLAIN_USER: (&str, &str) = ("plainuser", "plainpass");

/// `[pool]` settings; defaults suit tests (short waits, small pools).
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub pool_mode: String,
    pub pool_size: u32,
    pub min_idle: u32,
    pub connect_timeout: f64,
    pub query_wait_timeout: f64,
    pub idle_timeout: f64,
    pub server_lifetime: f64,
    pub max_client_conn: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            pool_mode: "transaction".into(),
            pool_size: 8,
            min_idle: 0,
            connect_timeout: 5.0,
            query_wait_timeout: 20.0,
            idle_timeout: 600.0,
            server_lifetime: 3600.0,
            max_client_conn: 1000,
        }
    }
}

/// Builds a pgdecomp config (the format of `config/pgdecomp.toml`) for a topology, with
/// fresh `listen` and `metrics_listen` ports.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: u16,
    pub metrics_listen: u16,
    pub pool: PoolSettings,
    pub auth_type: String,
    /// `[server]` credentials; `None` makes the proxy log in as the client's own user.
    pub server: Option<(String, String)>,
    pub phase: u32,
    /// `workers`: threads serving clients (1, the default, is one current-thread runtime).
    pub workers: usize,
    main_primary: u16,
    main_replicas: Vec<u16>,
    ci_primary: u16,
    ci_replicas: Vec<u16>,
    /// The body of `[health]`. Tests of routing tables turn read-your-writes off: it sends a
    /// client's reads after its writes to the primary, which `tests/topology.rs` covers.
    pub health: String,
    /// Patroni REST endpoints of main and ci; when set, the clusters list no hosts.
    pub patroni: Option<(Vec<String>, Vec<String>)>,
    /// Raw TOML appended at the end (extra tables such as `[classify]`).
    pub extra: String,
    /// Raw TOML lines appended to `[pool]`.
    pub pool_extra: String,
}

impl ProxyConfig {
    pub fn new(topo: &Topology) -> ProxyConfig {
        let main_primary = topo.main_primary();
        let (main_replicas, ci_primary, ci_replicas) = match topo.kind() {
            Kind::Full => (
                vec![topo.main_replica()],
                topo.ci_primary(),
                vec![topo.ci_replica()],
            ),
            // Phases before 3 never use the CI cluster; point it at main so the config is valid.
            Kind::MainOnly => (vec![], main_primary, vec![]),
        };
        ProxyConfig {
            main_primary,
            main_replicas,
            ci_primary,
            ci_replicas,
            health: "interval = 0.5\nread_your_writes = false".into(),
            ..ProxyConfig::base()
        }
    }

    /// Ports and settings every config shares; clusters empty.
    fn base() -> ProxyConfig {
        ProxyConfig {
            listen: free_port(),
            metrics_listen: free_port(),
            pool: PoolSettings::default(),
            auth_type: "scram-sha-256".into(),
            server: Some((GITLAB.0.into(), GITLAB.1.into())),
            phase: 1,
            workers: 1,
            main_primary: 0,
            main_replicas: vec![],
            ci_primary: 0,
            ci_replicas: vec![],
            health: "interval = 0.5".into(),
            patroni: None,
            extra: String::new(),
            pool_extra: String::new(),
        }
    }

    /// A config for servers the harness did not start (a Patroni lab): clusters by Patroni
    /// endpoints only.
    pub fn for_patroni(main: Vec<String>, ci: Vec<String>) -> ProxyConfig {
        ProxyConfig {
            patroni: Some((main, ci)),
            ..ProxyConfig::base()
        }
    }

    /// Replaces the body of `[health]`.
    pub fn health(mut self, toml: &str) -> Self {
        self.health = toml.into();
        self
    }

    pub fn pool_mode(mut self, mode: &str) -> Self {
        self.pool.pool_mode = mode.into();
        self
    }

    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool.pool_size = size;
        self
    }

    pub fn query_wait_timeout(mut self, seconds: f64) -> Self {
        self.pool.query_wait_timeout = seconds;
        self
    }

    pub fn max_client_conn(mut self, n: u32) -> Self {
        self.pool.max_client_conn = n;
        self
    }

    pub fn auth_type(mut self, auth_type: &str) -> Self {
        self.auth_type = auth_type.into();
        self
    }

    pub fn server(mut self, credentials: Option<(&str, &str)>) -> Self {
        self.server = credentials.map(|(u, p)| (u.into(), p.into()));
        self
    }

    pub fn phase(mut self, phase: u32) -> Self {
        self.phase = phase;
        self
    }

    /// Adds `toml` lines to the `[pool]` table.
    pub fn extra_pool(mut self, toml: &str) -> Self {
        self.pool_extra.push_str(toml);
        self.pool_extra.push('\n');
        self
    }

    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// The config file text. Relative paths resolve against the proxy's temp dir.
    pub fn build(&self) -> String {
        let p = &self.pool;
        let mut s = String::new();
        let _ = writeln!(s, "listen = \"127.0.0.1:{}\"", self.listen);
        let _ = writeln!(s, "metrics_listen = \"127.0.0.1:{}\"", self.metrics_listen);
        let _ = writeln!(s, "auth_file = \"userlist.txt\"");
        let _ = writeln!(s, "auth_type = \"{}\"", self.auth_type);
        let _ = writeln!(s, "admin_users = [\"{}\"]", ADMIN.0);
        let _ = writeln!(s, "auth_timeout = 10.0");
        let _ = writeln!(s, "workers = {}", self.workers);
        let _ = writeln!(s, "phase_file = \"{}\"", phase_file(self.phase).display());
        let _ = writeln!(s, "\n[pool]");
        let _ = writeln!(s, "pool_mode = \"{}\"", p.pool_mode);
        let _ = writeln!(s, "pool_size = {}", p.pool_size);
        let _ = writeln!(s, "min_idle = {}", p.min_idle);
        let _ = writeln!(s, "connect_timeout = {:?}", p.connect_timeout);
        let _ = writeln!(s, "query_wait_timeout = {:?}", p.query_wait_timeout);
        let _ = writeln!(s, "idle_timeout = {:?}", p.idle_timeout);
        let _ = writeln!(s, "server_lifetime = {:?}", p.server_lifetime);
        let _ = writeln!(s, "max_client_conn = {}", p.max_client_conn);
        s.push_str(&self.pool_extra);
        if let Some((user, password)) = &self.server {
            let _ = writeln!(
                s,
                "\n[server]\nuser = \"{user}\"\npassword = \"{password}\""
            );
        }
        for (name, db_config) in [(DATABASE, None), ("main", Some("main")), ("ci", Some("ci"))] {
            let _ = writeln!(s, "\n[databases.{name}]\ndbname = \"{DATABASE}\"");
            if let Some(db_config) = db_config {
                let _ = writeln!(s, "db_config = \"{db_config}\"");
            }
        }
        if let Some((main, ci)) = &self.patroni {
            for (name, endpoints) in [("main", main), ("ci", ci)] {
                let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
                let _ = writeln!(s, "\n[clusters.{name}]\npatroni = [{}]", list.join(", "));
            }
        } else {
            for (name, primary, replicas) in [
                ("main", self.main_primary, &self.main_replicas),
                ("ci", self.ci_primary, &self.ci_replicas),
            ] {
                let replicas: Vec<String> = replicas
                    .iter()
                    .map(|p| format!("\"127.0.0.1:{p}\""))
                    .collect();
                let _ = writeln!(
                    s,
                    "\n[clusters.{name}]\nprimary = \"127.0.0.1:{primary}\"\nreplicas = [{}]",
                    replicas.join(", ")
                );
            }
        }
        let _ = writeln!(s, "\n[health]\n{}", self.health);
        s.push_str(&self.extra);
        s
    }
}

/// `phases/phase-N.toml` of this repository, or a stand-in written next to the config.
fn phase_file(phase: u32) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("phases/phase-{phase}.toml"));
    if shipped.is_file() {
        shipped
    } else {
        PathBuf::from("phase.toml")
    }
}

/// The generated PgBouncer-style auth file: one user per stored password format.
pub fn auth_file() -> &'static str {
    static FILE: OnceLock<String> = OnceLock::new();
    FILE.get_or_init(|| {
        use postgres_protocol::password;
        let scram = password::scram_sha_256(GITLAB.1.as_bytes());
        let md5 = password::md5(MD5_CLIENT.1.as_bytes(), MD5_CLIENT.0);
        let md5_server = password::md5(MD5_USER.1.as_bytes(), MD5_USER.0);
        format!(
            "\"{}\" \"{scram}\"\n\"{}\" \"{md5}\"\n\"{}\" \"{}\"\n\"{}\" \"{}\"\n\"{}\" \"{md5_server}\"\n\"{}\" \"{}\"\n",
            GITLAB.0,
            MD5_CLIENT.0,
            PLAIN_CLIENT.0,
            PLAIN_CLIENT.1,
            ADMIN.0,
            ADMIN.1,
            MD5_USER.0,
            PLAIN_USER.0,
            PLAIN_USER.1,
        )
    })
}

/// A running pgdecomp process; dropping it kills the process and removes its files.
pub struct Proxy {
    child: Child,
    watchdog: Child,
    dir: PathBuf,
    port: u16,
    metrics_port: Option<u16>,
}

impl Proxy {
    /// Writes `config_toml`, `userlist.txt` and a stand-in `phase.toml` into a fresh temp dir,
    /// runs `pgdecomp run --config <file>` and waits until its listen port accepts TCP.
    pub fn start(config_toml: &str) -> Proxy {
        let dir = new_dir();
        let value: toml::Table = config_toml
            .parse()
            .unwrap_or_else(|e| panic!("test config is not TOML: {e}\n{config_toml}"));
        let port = port_of(value.get("listen")).expect("config has listen = \"host:port\"");
        let metrics_port = port_of(value.get("metrics_listen"));
        let config = dir.join("pgdecomp.toml");
        std::fs::write(&config, config_toml).expect("write config");
        std::fs::write(dir.join("userlist.txt"), auth_file()).expect("write auth file");
        std::fs::write(dir.join("phase.toml"), "phase = 1\n").expect("write phase file");
        let log = std::fs::File::create(dir.join("pgdecomp.log")).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_pgdecomp"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .current_dir(&dir)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn pgdecomp");
        let watchdog = spawn_killer(child.id(), &dir);
        let mut proxy = Proxy {
            child,
            watchdog,
            dir,
            port,
            metrics_port,
        };
        proxy.wait_listening();
        proxy
    }

    /// Starts pgdecomp with [`ProxyConfig::new`] defaults adjusted by `adjust`.
    pub fn with(topo: &Topology, adjust: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Proxy {
        Proxy::start(&adjust(ProxyConfig::new(topo)).build())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("pgdecomp.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgdecomp.log")).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM", "INT") to the proxy process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} pgdecomp failed");
    }

    /// Waits up to `bound` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the proxy to reload its config (SIGHUP).
    pub fn reload(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill -HUP");
        assert!(status.success(), "kill -HUP pgdecomp failed");
    }

    /// A tokio-postgres config for `user` through the proxy.
    pub fn config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(BOUND);
        config
    }

    /// `gitlab`/`gitlab` on `gitlabhq_production` through the proxy.
    pub fn app_config(&self) -> tokio_postgres::Config {
        self.config(GITLAB.0, GITLAB.1, DATABASE)
    }

    /// Connects `gitlab` through the proxy; panics with the proxy log on failure.
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_with(&self.app_config()).await
    }

    pub async fn connect_with(&self, config: &tokio_postgres::Config) -> tokio_postgres::Client {
        match connect(config).await {
            Ok(client) => client,
            Err(e) => panic!(
                "connect through pgdecomp failed: {e:?}\n--- pgdecomp log ---\n{}",
                self.log()
            ),
        }
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pgdecomp exited ({status}) before listening on 127.0.0.1:{}\n--- pgdecomp log ---\n{}",
                    self.port,
                    self.log()
                );
            }
            let addr = ([127, 0, 0, 1], self.port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "pgdecomp did not listen on 127.0.0.1:{} within {BOUND:?}\n--- pgdecomp log ---\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- pgdecomp log ({}) ---\n{}",
                self.dir.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects with a bounded wait and drives the connection in the background.
pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio::time::timeout(BOUND, config.connect(tokio_postgres::NoTls))
        .await
        .unwrap_or_else(|_| panic!("connect did not finish within {BOUND:?}"))?;
    tokio::spawn(conn);
    Ok(client)
}

fn port_of(value: Option<&toml::Value>) -> Option<u16> {
    let addr = value?.as_str()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

fn new_dir() -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("pgdecomp-proxy-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create proxy temp dir");
    dir
}

/// Kills `pid` and removes `dir` once this test process is gone, so a killed test run
/// leaves no proxy behind.
fn spawn_killer(pid: u32, dir: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args([
            "-c",
            r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; kill -9 "$2" 2>/dev/null; rm -rf "$3""#,
            "pgdecomp-proxy-watchdog",
        ])
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn proxy watchdog")
}

/// psql through `proxy` as `user` on `db`: `-X -At`, stopping at the first error. The caller
/// adds the statement (`-c`) and any environment.
pub fn psql_command(proxy: &Proxy, (user, password): (&str, &str), db: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args(["-p", &proxy.port().to_string(), "-U", user, "-d", db])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// The first column of the first row `sql` returns (simple protocol), parsed.
pub async fn first_value<T: std::str::FromStr>(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<T, tokio_postgres::Error> {
    let rows = client.simple_query(sql).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a row with a value from {sql:?}")))
}
