//! Fleet coordination, its pure decisions: which phase file an instance applies given what it
//! runs and what etcd says, how a `phase set` argument becomes the stored value, which switches
//! an operator may make, and the record each instance registers. No I/O here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FleetError;

/// The phase this instance runs and where it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Applied {
    /// The config's `phase_file`: no phase in etcd yet, or etcd not reached since start.
    #[default]
    File,
    /// The value of `<prefix>/phase` at its etcd `mod_revision`.
    Etcd { value: String, revision: i64 },
}

impl Applied {
    /// The etcd revision of the applied phase; 0 when it came from the file.
    pub fn revision(&self) -> i64 {
        match self {
            Applied::File => 0,
            Applied::Etcd { revision, .. } => *revision,
        }
    }
}

/// What etcd said about `<prefix>/phase`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcdPhase {
    Unreachable,
    /// No phase stored: etcd does not manage the phase (yet).
    Absent,
    Set {
        value: String,
        revision: i64,
    },
}

/// What to do with the phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Keep running what is applied.
    Keep,
    /// Reload with this phase file.
    Apply {
        file: PathBuf,
        value: String,
        revision: i64,
    },
    /// The stored value is not a usable phase name: keep the current phase and say why.
    Reject { value: String, reason: String },
}

/// Decides the phase. etcd wins over the file when it holds a phase. Unreachable etcd keeps
/// what runs (fail static: the fleet never changes phase without etcd). A deleted key keeps
/// it too: falling back to each instance's file could split the fleet (or undo phase 7).
/// An event no newer than the applied revision is a replay and is ignored.
pub fn choose(applied: &Applied, etcd: &EtcdPhase, phase_dir: &Path) -> Choice {
    let (value, revision) = match etcd {
        EtcdPhase::Unreachable | EtcdPhase::Absent => return Choice::Keep,
        EtcdPhase::Set { value, revision } => (value, *revision),
    };
    if revision <= applied.revision() {
        return Choice::Keep;
    }
    match resolve_phase_file(phase_dir, value) {
        Ok(file) => Choice::Apply {
            file,
            value: value.clone(),
            revision,
        },
        Err(e) => Choice::Reject {
            value: value.clone(),
            reason: e.to_string(),
        },
    }
}

/// The stored value for `pgdecomp phase set ARG`: a phase number N stands for the shipped
/// `phase-N.toml`; anything else must be a phase file name in the phase directory.
pub fn phase_value(arg: &str) -> Result<String, FleetError> {
    let arg = arg.trim();
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
        return match arg.parse::<u8>() {
            Ok(n @ 1..=7) => Ok(format!("phase-{n}.toml")),
            _ => Err(FleetError::BadValue {
                value: arg.into(),
                reason: "phases are numbered 1 to 7",
            }),
        };
    }
    check_name(arg)?;
    Ok(arg.to_string())
}

fn check_name(value: &str) -> Result<(), FleetError> {
    let bad = |reason| {
        Err(FleetError::BadValue {
            value: value.into(),
            reason,
        })
    };
    if value.is_empty() || value.starts_with('.') {
        return bad("must be a file name such as phase-4.toml");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return bad("a phase file name holds only letters, digits, '.', '-' and '_' (no path)");
    }
    if !value.ends_with(".toml") {
        return bad("a phase file name ends with .toml");
    }
    Ok(())
}

/// The phase file a stored value names, inside `phase_dir` (never outside it).
pub fn resolve_phase_file(phase_dir: &Path, value: &str) -> Result<PathBuf, FleetError> {
    check_name(value)?;
    Ok(phase_dir.join(value))
}

/// Which operator switches `pgdecomp phase set` makes. Phase 7 is entered by the cutover
/// (after promoting the CI cluster) and never left (the databases have diverged); `force`
/// is for an operator who promoted by hand.
pub fn check_switch(current: Option<u8>, next: u8, force: bool) -> Result<(), FleetError> {
    if force {
        return Ok(());
    }
    match (current, next) {
        (Some(7), n) if n < 7 => Err(FleetError::Refused(format!(
            "the fleet is in phase 7; going back to phase {n} would write ci rows to main after they diverged (--force overrides)"
        ))),
        (Some(c), 7) if c != 7 => Err(FleetError::Refused(
            "phase 7 needs a promoted CI cluster: use the cutover, or --force after promoting by hand".into(),
        )),
        (None, 7) => Err(FleetError::Refused(
            "phase 7 needs a promoted CI cluster: use the cutover, or --force after promoting by hand".into(),
        )),
        _ => Ok(()),
    }
}

/// What each instance registers under `<prefix>/instances/<instance>` (JSON, leased).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance: String,
    pub listen: String,
    /// The phase number running now.
    pub phase: u8,
    /// The phase file running now (its name when it came from etcd).
    pub phase_file: String,
    /// `etcd` or `file`.
    pub source: String,
    /// The etcd revision of the applied phase; 0 when it came from the file.
    pub revision: i64,
    pub pid: u32,
    /// Why the last phase from etcd was not applied, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix milliseconds of the last write of this record (rewritten every lease_ttl / 3).
    #[serde(default)]
    pub heartbeat_ms: u64,
    /// Unix milliseconds of the last violation this instance counted (0: none since start).
    #[serde(default)]
    pub last_violation_ms: u64,
    /// The cutover epoch whose hold this instance applies now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
}

impl InstanceRecord {
    /// Whether this instance runs the phase stored at `revision` (or a later one).
    pub fn caught_up(&self, revision: i64) -> bool {
        self.source == "etcd" && self.revision >= revision && self.error.is_none()
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
