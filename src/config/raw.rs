//! Config as written in TOML, mirrored 1:1 by serde structs. Unknown keys are errors that name
//! the key. Validation into a usable snapshot happens in `snapshot.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: String,
    #[serde(default)]
    pub metrics_listen: String,
    pub auth_file: String,
    #[serde(default = "default_auth_type")]
    pub auth_type: String,
    #[serde(default)]
    pub admin_users: Vec<String>,
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout: f64,
    /// Seconds SIGTERM / SHUTDOWN wait for running transactions before closing everything.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: f64,
    pub phase_file: String,
    #[serde(default)]
    pub pool: RawPool,
    #[serde(default)]
    pub server: RawServer,
    pub databases: BTreeMap<String, RawDatabase>,
    pub clusters: RawClusters,
    #[serde(default)]
    pub classify: RawClassify,
    #[serde(default)]
    pub health: RawHealth,
    /// Holds selected clients' transactions while WAL archiving lags (`config/throttle.rs`).
    #[serde(default)]
    pub throttle: RawThrottle,
    /// Reload when the config, phase or auth file changes on disk (polled every second).
    #[serde(default)]
    pub watch_files: bool,
    /// Threads serving clients: 1 runs them all on one thread as PgBouncer does, N shares a
    /// work-stealing runtime among N threads, 0 uses one per core. Read at start only.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Largest client message accepted, in bytes (a bigger one closes the connection).
    #[serde(default = "default_max_message")]
    pub max_message_size: usize,
    /// TLS towards clients: disable, allow (prefer), require.
    pub client_tls_mode: Option<String>,
    pub client_tls_cert_file: Option<String>,
    pub client_tls_key_file: Option<String>,
    /// TLS towards servers: disable, prefer, require, verify-ca, verify-full.
    pub server_tls_mode: Option<String>,
    pub server_tls_ca_file: Option<String>,
    /// `[fleet]`: follow the phase stored in etcd (`src/fleet/`); absent, `phase_file` rules.
    pub fleet: Option<crate::fleet::RawFleet>,
    /// `[cutover]`: the phase-7 cutover's bounds and preflight (`src/cutover/`).
    pub cutover: Option<crate::cutover::RawCutover>,
}

fn default_auth_type() -> String {
    "scram-sha-256".into()
}
fn default_auth_timeout() -> f64 {
    10.0
}
fn default_shutdown_timeout() -> f64 {
    30.0
}
fn default_workers() -> usize {
    1
}
fn default_max_message() -> usize {
    256 * 1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPool {
    pub pool_mode: String,
    pub pool_size: usize,
    pub min_idle: usize,
    pub connect_timeout: f64,
    pub query_wait_timeout: f64,
    pub idle_timeout: f64,
    pub server_lifetime: f64,
    pub max_client_conn: usize,
    /// Connections still logging in (waiting on their client) kept at once; a new one beyond
    /// it closes the oldest, so half-open connections cannot lock logins out.
    pub max_pending_logins: usize,
    /// New logins admitted per second, in bursts of up to a second's worth (0: no limit).
    pub max_logins_per_second: u32,
    /// Logged-in clients per user and per logical database (0: no limit).
    pub max_user_connections: usize,
    pub max_db_connections: usize,
    /// Seconds a client may stay idle outside a transaction before it is closed (0: never).
    pub client_idle_timeout: f64,
    /// Seconds a client may stay idle inside a transaction, holding its server (0: never).
    pub idle_transaction_timeout: f64,
    /// Seconds one request may wait on the server before it is cancelled (0: never).
    pub query_timeout: f64,
    /// Idle seconds after which a server connection is pinged before reuse.
    pub server_check_delay: f64,
    /// Statements kept prepared per server connection; the least recently used is closed.
    pub max_prepared_statements: usize,
    /// Named statements one client may hold; a Parse beyond it is refused (53400).
    pub max_client_prepared_statements: usize,
    /// Bytes buffered per client in each direction before the proxy stops reading.
    pub client_buffer_bytes: usize,
}

impl Default for RawPool {
    fn default() -> Self {
        Self {
            pool_mode: "transaction".into(),
            pool_size: 20,
            min_idle: 0,
            connect_timeout: 5.0,
            query_wait_timeout: 120.0,
            idle_timeout: 600.0,
            server_lifetime: 3600.0,
            max_client_conn: 1000,
            max_pending_logins: 1000,
            max_logins_per_second: 0,
            max_user_connections: 0,
            max_db_connections: 0,
            client_idle_timeout: 0.0,
            idle_transaction_timeout: 0.0,
            query_timeout: 0.0,
            server_check_delay: 30.0,
            max_prepared_statements: 200,
            max_client_prepared_statements: 5000,
            client_buffer_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub user: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub dbname: Option<String>,
    pub db_config: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusters {
    pub main: RawCluster,
    pub ci: RawCluster,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Required unless `patroni` lists endpoints (then it only seeds the first check).
    pub primary: Option<String>,
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Patroni REST endpoints (host:port) polled for the cluster's members and roles.
    #[serde(default)]
    pub patroni: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    /// Seconds between checks of every server (and Patroni polls); 0 turns checking off.
    pub interval: f64,
    pub statement_timeout: f64,
    pub max_lag_seconds: f64,
    pub max_lag_bytes: u64,
    /// Login for checks; defaults to `[server]`.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Database the checks connect to; defaults to the first configured database's dbname.
    pub dbname: Option<String>,
    /// Seconds a write waits for a writable primary (switchover, failover) before it fails.
    pub primary_wait: f64,
    pub read_your_writes: bool,
    /// Seconds after a write during which the client's reads need a caught-up replica.
    pub read_your_writes_timeout: f64,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            interval: 2.0,
            statement_timeout: 1.0,
            max_lag_seconds: 60.0,
            max_lag_bytes: 8 * 1024 * 1024,
            user: None,
            password: None,
            dbname: None,
            primary_wait: 10.0,
            read_your_writes: true,
            read_your_writes_timeout: 30.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClassify {
    pub dictionary: Option<String>,
    pub schema_rules: Option<String>,
    pub write_functions: Vec<String>,
    pub cache_size: usize,
    /// Longer statements are parsed from their literal-free text, or fail closed.
    pub max_statement_bytes: usize,
    /// Glob → gitlab_schema for tables the dictionary does not list (e.g. partitions).
    pub table_patterns: BTreeMap<String, String>,
    /// Learn partitions (and function volatility) from the main primary's catalog.
    pub catalog: bool,
}

impl Default for RawClassify {
    fn default() -> Self {
        Self {
            dictionary: None,
            schema_rules: None,
            write_functions: vec![],
            cache_size: 10_000,
            max_statement_bytes: crate::classify::MAX_STATEMENT_BYTES,
            table_patterns: BTreeMap::new(),
            catalog: true,
        }
    }
}

/// `[throttle]`: no client is selected by default, so nothing is held.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawThrottle {
    /// Segments waiting for archiving (`.ready` files) above which selected clients wait.
    pub archive_ready_threshold: u64,
    /// application_name globs (`*` = any run of characters) of the throttled clients.
    pub application_names: Vec<String>,
    /// Logins of the throttled clients.
    pub users: Vec<String>,
    /// Seconds a transaction may be held before it is refused.
    pub max_hold: f64,
}

impl Default for RawThrottle {
    fn default() -> Self {
        Self {
            archive_ready_threshold: super::throttle::GITLAB_THRESHOLD,
            application_names: vec![],
            users: vec![],
            max_hold: 300.0,
        }
    }
}
