//! Config (raw → **validated** → snapshot): the `[health]` settings the topology checker
//! reads. They live in config so that config does not import the topology it configures.

use std::time::Duration;

use crate::server::ServerSpec;

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
