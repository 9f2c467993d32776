//! Fleet coordination, its configuration: the optional `[fleet]` table as written (`RawFleet`,
//! part of `RawConfig`) and validated (`FleetSettings`, part of the config `Snapshot`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `[fleet]` as written. Read at start only: a reload does not reconnect to other endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// etcd v3 endpoints (`http://host:port`), usually the ones Patroni uses.
    pub etcd: Vec<String>,
    /// Keys of this deployment live under it: `<prefix>/phase`, `<prefix>/instances/…`.
    pub prefix: String,
    /// This instance's name in the fleet; defaults to `<hostname>:<listen port>`.
    pub instance: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: f64,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: f64,
    /// Seconds the registration outlives a silent instance.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: i64,
    /// Longest pause between reconnection attempts (they start at 0.5 s and double).
    #[serde(default = "default_retry_max")]
    pub retry_max: f64,
}

fn default_connect_timeout() -> f64 {
    2.0
}
fn default_request_timeout() -> f64 {
    5.0
}
fn default_lease_ttl() -> i64 {
    10
}
fn default_retry_max() -> f64 {
    10.0
}

/// `[fleet]` validated.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetSettings {
    pub endpoints: Vec<String>,
    /// Without a trailing slash.
    pub prefix: String,
    pub instance: String,
    /// Where phase names read from etcd are looked up: the directory of `phase_file`.
    pub phase_dir: PathBuf,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub lease_ttl: i64,
    pub retry_max: Duration,
}

impl FleetSettings {
    pub fn phase_key(&self) -> String {
        format!("{}/phase", self.prefix)
    }

    pub fn instances_prefix(&self) -> String {
        format!("{}/instances/", self.prefix)
    }

    pub fn instance_key(&self) -> String {
        format!("{}{}", self.instances_prefix(), self.instance)
    }

    /// `<prefix>/cutover/<name>`: record, lock, hold, abort, or `held/<instance>`.
    pub fn cutover_key(&self, name: &str) -> String {
        format!("{}/cutover/{name}", self.prefix)
    }

    /// Where this instance confirms a cutover's hold.
    pub fn held_key(&self) -> String {
        self.cutover_key(&format!("held/{}", self.instance))
    }
}

fn invalid(path: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        key: format!("fleet.{key}"),
        message: message.into(),
    }
}

fn seconds(path: &Path, key: &str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(invalid(
            path,
            key,
            format!("must be a positive number of seconds, got {v}"),
        ))
    }
}

/// This machine's name, for the default instance name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pgdecomp".into())
}

/// Validates `[fleet]`; `phase_file` is the config's own, already resolved against its dir.
pub fn settings(
    path: &Path,
    raw: Option<&RawFleet>,
    listen: SocketAddr,
    phase_file: &Path,
) -> Result<Option<FleetSettings>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.etcd.is_empty() {
        return Err(invalid(path, "etcd", "lists no endpoint"));
    }
    if let Some(e) = raw.etcd.iter().find(|e| !e.starts_with("http://")) {
        return Err(invalid(
            path,
            "etcd",
            format!("{e:?}: only http:// endpoints are supported (no TLS towards etcd yet)"),
        ));
    }
    let prefix = raw.prefix.trim_end_matches('/').to_string();
    if !prefix.starts_with('/') || prefix.len() < 2 {
        return Err(invalid(
            path,
            "prefix",
            "must start with / and name a key, e.g. \"/pgdecomp/gitlab\"",
        ));
    }
    let instance = raw
        .instance
        .clone()
        .unwrap_or_else(|| format!("{}:{}", hostname(), listen.port()));
    if instance.is_empty() || instance.contains('/') {
        return Err(invalid(
            path,
            "instance",
            "must be non-empty and contain no /",
        ));
    }
    if raw.lease_ttl < 2 {
        return Err(invalid(path, "lease_ttl", "must be at least 2 seconds"));
    }
    Ok(Some(FleetSettings {
        endpoints: raw.etcd.clone(),
        prefix,
        instance,
        phase_dir: phase_file.parent().unwrap_or(Path::new(".")).to_path_buf(),
        connect_timeout: seconds(path, "connect_timeout", raw.connect_timeout)?,
        request_timeout: seconds(path, "request_timeout", raw.request_timeout)?,
        lease_ttl: raw.lease_ttl,
        retry_max: seconds(path, "retry_max", raw.retry_max)?,
    }))
}
