//! Fleet coordination beside the pipeline: every pgdecomp instance of one deployment follows
//! the phase stored in etcd (`<prefix>/phase`) and registers itself under
//! `<prefix>/instances/<instance>` with a lease. A phase read from etcd is applied through the
//! ordinary reload (`Shared::reload_with_phase`), so there is one phase path, not two.
//!
//! Without a `[fleet]` section none of this runs and the phase comes from `phase_file`.

mod agent;
pub mod cli;
mod decide;
pub(crate) mod etcd;
mod hold;
mod settings;

use std::path::PathBuf;
use std::sync::Mutex;

pub use agent::start;
pub use decide::{
    check_switch, choose, phase_value, resolve_phase_file, Applied, Choice, EtcdPhase,
    InstanceRecord,
};
pub use settings::{settings, FleetSettings, RawFleet};

/// Why a fleet operation failed. The running proxy keeps its current phase on any of these.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("etcd closed the watch of {key}")]
    WatchClosed { key: String },
    #[error("the instance lease expired in etcd")]
    LeaseLost,
    #[error("invalid phase value {value:?}: {reason}")]
    BadValue { value: String, reason: &'static str },
    #[error("refused: {0}")]
    Refused(String),
    #[error("the phase changed in etcd since it was read (now at revision {revision}); read it again and retry")]
    Conflict { revision: i64 },
    #[error("no [fleet] section in {0}")]
    NotConfigured(PathBuf),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("instance record under {key} is not valid JSON: {error}")]
    Record {
        key: String,
        error: serde_json::Error,
    },
}

/// Where this instance's phase comes from and how its link to etcd is, for SHOW FLEET.
#[derive(Clone, Debug, Default)]
pub struct FleetStatus {
    pub connected: bool,
    pub applied: Applied,
    pub last_error: Option<String>,
}

/// The fleet's share of `Shared`: the phase file chosen through etcd (kept across reloads, so
/// SIGHUP does not undo it) and the status shown by the admin console.
#[derive(Default)]
pub struct FleetState {
    /// `None`: the config's own `phase_file`.
    pub phase_file: Mutex<Option<PathBuf>>,
    pub status: Mutex<FleetStatus>,
}

impl FleetState {
    /// A copy of the status; a poisoned lock still holds a usable status.
    pub fn status(&self) -> FleetStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut FleetStatus)) {
        match self.status.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}
