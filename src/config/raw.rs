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
    pub phase_file: String,
    #[serde(default)]
    pub pool: RawPool,
    #[serde(default)]
    pub server: RawServer,
    pub databases: BTreeMap<String, RawDatabase>,
    pub clusters: RawClusters,
    #[serde(default)]
    pub classify: RawClassify,
    /// Reload when the config, phase or auth file changes on disk (polled every second).
    #[serde(default)]
    pub watch_files: bool,
    /// Largest client message accepted, in bytes (a bigger one closes the connection).
    #[serde(default = "default_max_message")]
    pub max_message_size: usize,
}

fn default_auth_type() -> String {
    "scram-sha-256".into()
}
fn default_auth_timeout() -> f64 {
    10.0
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
    /// Idle seconds after which a server connection is pinged before reuse.
    pub server_check_delay: f64,
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
            server_check_delay: 30.0,
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
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClassify {
    pub dictionary: Option<String>,
    pub schema_rules: Option<String>,
    pub write_functions: Vec<String>,
    pub cache_size: usize,
}

impl Default for RawClassify {
    fn default() -> Self {
        Self {
            dictionary: None,
            schema_rules: None,
            write_functions: vec![],
            cache_size: 10_000,
        }
    }
}
