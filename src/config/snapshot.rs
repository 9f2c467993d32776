//! The validated, immutable configuration every session reads. Built from `RawConfig`; any
//! invalid value is an error naming its key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::raw::{RawClassify, RawCluster, RawConfig};
use super::HealthSettings;
use super::{read, ConfigError};
use crate::auth::UserList;
use crate::classify::{Classifier, Dictionary, SchemaRules};
use crate::pool::{ConnLimits, PoolSettings};
use crate::route::{Group, Phase};

/// How long a client keeps a server connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthType {
    ScramSha256,
    Md5,
    Trust,
}

/// A logical database clients connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub dbname: String,
    /// `None`: transparent (route by tables); `Some(group)`: GitLab-style per-db_config connection.
    pub db_config: Option<Group>,
}

/// A primary and its replicas, as host:port, and the Patroni endpoints that say which is which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Optional with Patroni: discovery names the leader.
    pub primary: Option<String>,
    pub replicas: Vec<String>,
    pub patroni: Vec<String>,
}

/// Everything a running pgdecomp needs, validated.
pub struct Snapshot {
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub users: Arc<UserList>,
    pub auth_type: AuthType,
    pub admin_users: Vec<String>,
    pub auth_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub pool_mode: PoolMode,
    pub pool: PoolSettings,
    pub max_client_conn: usize,
    pub max_pending_logins: usize,
    pub max_logins_per_second: u32,
    pub max_user_connections: usize,
    pub max_db_connections: usize,
    /// Zero: never.
    pub client_idle_timeout: Duration,
    pub idle_transaction_timeout: Duration,
    pub query_timeout: Duration,
    pub server_user: Option<String>,
    pub server_password: Option<String>,
    pub databases: HashMap<String, Database>,
    pub main: Cluster,
    pub ci: Cluster,
    pub health: HealthSettings,
    /// `[throttle]`: whose transactions wait while WAL archiving lags.
    pub throttle: super::ThrottleSettings,
    pub classifier: Classifier,
    pub cache_size: usize,
    pub max_statement_bytes: usize,
    /// `[classify] catalog`: learn partitions and function volatility from the main primary.
    pub learn_catalog: bool,
    /// `[classify] dictionary` as written (a shipped name or a file), for reports.
    pub dictionary_name: String,
    pub phase_file: PathBuf,
    pub phase: Arc<Phase>,
    pub max_message_size: usize,
    /// Client-serving threads (`workers`), read by `main` when it builds the runtime.
    pub workers: usize,
    /// TLS towards clients (SSLRequest answers, the certificate presented).
    pub client_tls: super::ClientTls,
    /// TLS towards servers, copied into every server connection's spec.
    pub server_tls: crate::server::tls::ServerTls,
    /// Statements kept prepared per server connection (least recently used closed first).
    pub max_prepared_statements: usize,
    /// Named statements one client may hold.
    pub max_client_prepared_statements: usize,
    /// Bytes buffered per client in each direction before the other side is no longer read.
    pub client_buffer: usize,
    pub watch_files: bool,
    /// Files whose change triggers a reload when `watch_files` is on.
    pub watched: Vec<PathBuf>,
    /// `[fleet]`: the etcd the phase comes from; `None` when the config has no such table.
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// `[cutover]`, defaults when absent.
    pub cutover: crate::cutover::CutoverSettings,
}

pub(super) fn invalid(path: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        key: key.into(),
        message: message.into(),
    }
}

pub(super) fn secs(path: &Path, key: &str, v: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(invalid(
            path,
            key,
            format!("must be a non-negative number of seconds, got {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn addr(path: &Path, key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|e| invalid(path, key, format!("{v:?} is not host:port ({e})")))
}

fn host_port(path: &Path, key: &str, v: &str) -> Result<String, ConfigError> {
    match v.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(v.to_string()),
        _ => Err(invalid(path, key, format!("{v:?} is not host:port"))),
    }
}

fn cluster(path: &Path, name: &str, raw: &RawCluster) -> Result<Cluster, ConfigError> {
    let primary = raw
        .primary
        .as_deref()
        .map(|p| host_port(path, &format!("clusters.{name}.primary"), p))
        .transpose()?;
    if primary.is_none() && raw.patroni.is_empty() {
        return Err(invalid(
            path,
            &format!("clusters.{name}.primary"),
            "is required unless `patroni` lists the cluster's REST endpoints",
        ));
    }
    let list = |key: &str, v: &[String]| {
        v.iter()
            .map(|r| host_port(path, &format!("clusters.{name}.{key}"), r))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Cluster {
        primary,
        replicas: list("replicas", &raw.replicas)?,
        patroni: list("patroni", &raw.patroni)?,
    })
}

/// Builds the classifier of a `[classify]` table; file names are relative to `dir`.
pub fn classifier_from(c: &RawClassify, dir: &Path) -> Result<Classifier, ConfigError> {
    let dictionary = match c.dictionary.as_deref() {
        None => Dictionary::gitlab_default(),
        Some(name) => match Dictionary::builtin(name) {
            Some(shipped) => shipped,
            None => Dictionary::from_tsv(&read(&dir.join(name))?)?,
        },
    }
    .with_patterns(
        c.table_patterns
            .iter()
            .map(|(g, s)| (g.as_str(), s.as_str())),
    )?;
    let rules = match &c.schema_rules {
        Some(f) => SchemaRules::from_toml(&read(&dir.join(f))?)?,
        None => SchemaRules::gitlab_2022(),
    };
    Ok(Classifier::new(dictionary, rules, &c.write_functions))
}

/// Loads a phase file and the shadow phase it names (relative to its own directory).
pub fn load_phase(file: &Path) -> Result<Phase, ConfigError> {
    let parse = |f: &Path| {
        Phase::from_toml(&read(f)?).map_err(|e| ConfigError::Parse {
            path: f.into(),
            message: e.to_string(),
        })
    };
    let phase = parse(file)?;
    let Some(shadow) = phase.shadow_file().map(str::to_string) else {
        return Ok(phase);
    };
    let shadow_path = file.parent().unwrap_or(Path::new(".")).join(shadow);
    let shadow = parse(&shadow_path)?;
    phase.with_shadow(shadow).map_err(|e| ConfigError::Parse {
        path: file.into(),
        message: e.to_string(),
    })
}

impl Snapshot {
    pub fn from_raw(raw: RawConfig, path: &Path) -> Result<Self, ConfigError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &str| dir.join(p);
        let listen = addr(path, "listen", &raw.listen)?;
        let metrics_listen = match raw.metrics_listen.as_str() {
            "" => None,
            m => Some(addr(path, "metrics_listen", m)?),
        };
        let users = Arc::new(UserList::load(&rel(&raw.auth_file))?);
        let auth_type = match raw.auth_type.as_str() {
            "scram-sha-256" => AuthType::ScramSha256,
            "md5" => AuthType::Md5,
            "trust" => AuthType::Trust,
            other => {
                return Err(invalid(
                    path,
                    "auth_type",
                    format!("unknown method {other:?}"),
                ))
            }
        };
        let p = &raw.pool;
        let pool_mode = match p.pool_mode.as_str() {
            "transaction" => PoolMode::Transaction,
            "session" => PoolMode::Session,
            other => {
                return Err(invalid(
                    path,
                    "pool.pool_mode",
                    format!("unknown mode {other:?}"),
                ))
            }
        };
        if p.pool_size == 0 {
            return Err(invalid(path, "pool.pool_size", "must be at least 1"));
        }
        let pool = PoolSettings {
            pool_size: p.pool_size,
            min_idle: p.min_idle.min(p.pool_size),
            query_wait_timeout: secs(path, "pool.query_wait_timeout", p.query_wait_timeout)?,
            idle_timeout: secs(path, "pool.idle_timeout", p.idle_timeout)?,
            limits: ConnLimits {
                connect_timeout: secs(path, "pool.connect_timeout", p.connect_timeout)?,
                server_lifetime: secs(path, "pool.server_lifetime", p.server_lifetime)?,
                check_delay: secs(path, "pool.server_check_delay", p.server_check_delay)?,
            },
        };
        let mut databases = HashMap::new();
        for (name, db) in &raw.databases {
            let db_config = match db.db_config.as_deref() {
                None => None,
                Some("main") => Some(Group::Main),
                Some("ci") => Some(Group::Ci),
                Some(other) => {
                    return Err(invalid(
                        path,
                        &format!("databases.{name}.db_config"),
                        format!("must be \"main\" or \"ci\", got {other:?}"),
                    ))
                }
            };
            let dbname = db.dbname.clone().unwrap_or_else(|| name.clone());
            databases.insert(name.clone(), Database { dbname, db_config });
        }
        if databases.contains_key(crate::ADMIN_DB) {
            return Err(invalid(
                path,
                "databases.pgdecomp",
                "is reserved for the admin console",
            ));
        }
        let classifier = classifier_from(&raw.classify, dir)?;
        let phase_file = rel(&raw.phase_file);
        let phase = Arc::new(load_phase(&phase_file)?);
        let fleet = crate::fleet::settings(path, raw.fleet.as_ref(), listen, &phase_file)?;
        let cutover = crate::cutover::settings(path, raw.cutover.as_ref())?;
        let server_tls = super::tls::server_tls(path, &raw, dir)?;
        let client_tls = super::tls::client_tls(path, &raw, dir)?;
        let health = super::health::from_raw(path, &raw, &databases, &server_tls)?;
        let (main, ci) = (
            cluster(path, "main", &raw.clusters.main)?,
            cluster(path, "ci", &raw.clusters.ci)?,
        );
        for (name, c) in [("main", &main), ("ci", &ci)] {
            if !c.patroni.is_empty() && !health.checks_enabled() {
                return Err(invalid(
                    path,
                    &format!("clusters.{name}.patroni"),
                    "needs health checks: health.interval above 0 and a login ([health] or [server] user)",
                ));
            }
        }
        Ok(Snapshot {
            source: path.to_path_buf(),
            listen,
            metrics_listen,
            users,
            auth_type,
            admin_users: raw.admin_users.clone(),
            auth_timeout: secs(path, "auth_timeout", raw.auth_timeout)?,
            shutdown_timeout: secs(path, "shutdown_timeout", raw.shutdown_timeout)?,
            pool_mode,
            pool,
            max_client_conn: p.max_client_conn,
            max_pending_logins: p.max_pending_logins.max(1),
            max_logins_per_second: p.max_logins_per_second,
            max_user_connections: p.max_user_connections,
            max_db_connections: p.max_db_connections,
            client_idle_timeout: secs(path, "pool.client_idle_timeout", p.client_idle_timeout)?,
            idle_transaction_timeout: secs(
                path,
                "pool.idle_transaction_timeout",
                p.idle_transaction_timeout,
            )?,
            query_timeout: secs(path, "pool.query_timeout", p.query_timeout)?,
            server_user: raw.server.user.clone(),
            server_password: raw.server.password.clone(),
            databases,
            main,
            ci,
            health,
            throttle: super::throttle::settings(path, &raw.throttle)?,
            classifier,
            cache_size: raw.classify.cache_size,
            max_statement_bytes: raw.classify.max_statement_bytes,
            learn_catalog: raw.classify.catalog,
            dictionary_name: raw
                .classify
                .dictionary
                .clone()
                .unwrap_or_else(|| "gitlab-2022".into()),
            phase_file: phase_file.clone(),
            phase,
            max_message_size: raw.max_message_size.max(1024),
            workers: raw.workers,
            client_tls,
            server_tls,
            max_prepared_statements: p.max_prepared_statements.max(1),
            max_client_prepared_statements: p.max_client_prepared_statements.max(1),
            client_buffer: p.client_buffer_bytes.max(16 * 1024),
            watch_files: raw.watch_files,
            watched: vec![path.to_path_buf(), phase_file.clone(), rel(&raw.auth_file)],
            fleet,
            cutover,
        })
    }

    /// A one-paragraph summary for `pgdecomp check-config`.
    pub fn summary(&self) -> String {
        format!(
            "config {} is valid\n  listen {} metrics {}\n  pool_mode {:?}, pool_size {}, max_client_conn {}\n  \
             main primary {:?} replicas {:?} patroni {:?}\n  ci primary {:?} replicas {:?} patroni {:?}\n  \
             health checks {}\n  databases {:?}\n  \
             users in auth file {}, admin users {:?}\n  phase file {} (phase {} {:?})",
            self.source.display(),
            self.listen,
            self.metrics_listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            self.pool_mode,
            self.pool.pool_size,
            self.max_client_conn,
            self.main.primary,
            self.main.replicas,
            self.main.patroni,
            self.ci.primary,
            self.ci.replicas,
            self.ci.patroni,
            if self.health.checks_enabled() {
                format!(
                    "every {:?}, max lag {:?} and {} bytes, read_your_writes {}",
                    self.health.interval,
                    self.health.max_lag_seconds,
                    self.health.max_lag_bytes,
                    self.health.read_your_writes
                )
            } else {
                "off".to_string()
            },
            {
                let mut d: Vec<_> = self.databases.keys().collect();
                d.sort();
                d
            },
            self.users.len(),
            self.admin_users,
            self.phase_file.display(),
            self.phase.number(),
            self.phase.name(),
        )
    }
}
