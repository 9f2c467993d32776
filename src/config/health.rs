//! Config (raw → **validated** → snapshot): the `[health]` settings the topology checker
//! reads. They live in config so that config does not import the topology it configures.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::raw::{RawConfig, RawHealth};
use super::snapshot::{invalid, secs, Database};
use super::ConfigError;
use crate::server::{ServerCredential, ServerSpec};

/// `[health]` from the config, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSettings {
    /// Zero turns checking (and Patroni polling) off: the config's roles are trusted.
    pub interval: Duration,
    pub statement_timeout: Duration,
    pub max_lag_seconds: Duration,
    pub max_lag_bytes: u64,
    /// Login and database for checks (the address is filled in per server); `None` when no
    /// credentials are configured, which also turns checks off.
    pub login: Option<ServerSpec>,
    pub primary_wait: Duration,
    pub read_your_writes: bool,
    pub read_your_writes_timeout: Duration,
}

impl HealthSettings {
    pub fn checks_enabled(&self) -> bool {
        !self.interval.is_zero() && self.login.is_some()
    }
}

/// `[health]`: checks log in with their own credentials, else `[server]`'s.
pub(super) fn from_raw(
    path: &Path,
    raw: &RawConfig,
    databases: &HashMap<String, Database>,
    tls: &crate::server::tls::ServerTls,
) -> Result<HealthSettings, ConfigError> {
    let h: &RawHealth = &raw.health;
    let user = h.user.clone().or_else(|| raw.server.user.clone());
    let password = h.password.clone().or_else(|| raw.server.password.clone());
    let dbname = h.dbname.clone().or_else(|| {
        raw.databases
            .keys()
            .next()
            .and_then(|k| databases.get(k))
            .map(|d| d.dbname.clone())
    });
    let login = match (user, dbname) {
        (Some(user), Some(dbname)) => Some(ServerSpec {
            addr: String::new(),
            dbname,
            user,
            credential: password.map_or(ServerCredential::None, ServerCredential::Plain),
            tls: tls.clone(),
        }),
        _ => None,
    };
    let timeout = secs(path, "health.statement_timeout", h.statement_timeout)?;
    if timeout.is_zero() {
        return Err(invalid(path, "health.statement_timeout", "must be above 0"));
    }
    Ok(HealthSettings {
        interval: secs(path, "health.interval", h.interval)?,
        statement_timeout: timeout,
        max_lag_seconds: secs(path, "health.max_lag_seconds", h.max_lag_seconds)?,
        max_lag_bytes: h.max_lag_bytes,
        login,
        primary_wait: secs(path, "health.primary_wait", h.primary_wait)?,
        read_your_writes: h.read_your_writes,
        read_your_writes_timeout: secs(
            path,
            "health.read_your_writes_timeout",
            h.read_your_writes_timeout,
        )?,
    })
}
