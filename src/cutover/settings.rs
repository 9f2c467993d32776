//! The cutover's configuration: the optional `[cutover]` table as written (`RawCutover`, part
//! of `RawConfig`) and validated (`CutoverSettings`, part of the config `Snapshot`). Every
//! step of the cutover is bounded by one of these.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `[cutover]` as written; every key has a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCutover {
    /// Seconds for every instance to hold new ci write transactions and see its running ones
    /// finish; past it the cutover aborts.
    pub hold_timeout: f64,
    /// Seconds for the CI standby leader to replay the main primary's WAL position.
    pub catchup_timeout: f64,
    /// Seconds for the promoted CI leader to become writable (the cutover keeps trying after).
    pub promote_timeout: f64,
    /// Seconds for every instance to report phase 7 after the switch.
    pub switch_timeout: f64,
    /// Preflight: the CI standby leader may replay at most this many bytes behind main.
    pub max_lag_bytes: u64,
    /// Preflight: no violation counted by any instance in this many seconds.
    pub violation_window: f64,
    /// Preflight: instances that must be registered in etcd (empty: whichever are).
    pub instances: Vec<String>,
}

impl Default for RawCutover {
    fn default() -> Self {
        Self {
            hold_timeout: 5.0,
            catchup_timeout: 30.0,
            promote_timeout: 60.0,
            switch_timeout: 30.0,
            max_lag_bytes: 16 << 20,
            violation_window: 600.0,
            instances: Vec::new(),
        }
    }
}

/// `[cutover]` validated.
#[derive(Clone, Debug, PartialEq)]
pub struct CutoverSettings {
    pub hold_timeout: Duration,
    pub catchup_timeout: Duration,
    pub promote_timeout: Duration,
    pub switch_timeout: Duration,
    pub max_lag_bytes: u64,
    pub violation_window: Duration,
    pub instances: Vec<String>,
}

fn seconds(path: &Path, key: &str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 86_400.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigError::Invalid {
            path: path.into(),
            key: format!("cutover.{key}"),
            message: format!("must be a positive number of seconds below a day, got {v}"),
        })
    }
}

/// Validates `[cutover]` (absent: the defaults).
pub fn settings(path: &Path, raw: Option<&RawCutover>) -> Result<CutoverSettings, ConfigError> {
    let default = RawCutover::default();
    let raw = raw.unwrap_or(&default);
    Ok(CutoverSettings {
        hold_timeout: seconds(path, "hold_timeout", raw.hold_timeout)?,
        catchup_timeout: seconds(path, "catchup_timeout", raw.catchup_timeout)?,
        promote_timeout: seconds(path, "promote_timeout", raw.promote_timeout)?,
        switch_timeout: seconds(path, "switch_timeout", raw.switch_timeout)?,
        max_lag_bytes: raw.max_lag_bytes,
        violation_window: seconds(path, "violation_window", raw.violation_window)?,
        instances: raw.instances.clone(),
    })
}
