//! The cutover's records: what the coordinator stores in etcd (`<prefix>/cutover/record`, the
//! step, epoch and outcome every instance and operator can read), what each instance confirms
//! under `<prefix>/cutover/held/<instance>`, and the report printed at the end. Data only.

use serde::{Deserialize, Serialize};

use super::steps::{Outcome, Step};

/// The cutover record in etcd.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub epoch: u64,
    pub dry_run: bool,
    /// The step's label.
    pub step: String,
    /// `running` until it ends, then the outcome's label.
    pub outcome: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// The main primary's WAL position the CI standby had to replay.
    #[serde(default)]
    pub lsn: Option<String>,
    /// Past the point of no return: the promotion has been asked for.
    #[serde(default)]
    pub committed: bool,
    pub coordinator: String,
    pub started_ms: u64,
    pub updated_ms: u64,
    #[serde(default)]
    pub hold_seconds: Option<f64>,
    #[serde(default)]
    pub catchup_seconds: Option<f64>,
}

impl Record {
    pub fn running(&self) -> bool {
        self.outcome == "running"
    }
}

/// What an instance confirms for the hold of `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAck {
    pub epoch: u64,
    /// No ci write transaction runs on this instance any more.
    pub drained: bool,
    /// ci write transactions still running when this was written.
    pub running: usize,
}

/// How long one step took.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepTime {
    pub step: &'static str,
    pub seconds: f64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The report `pgdecomp cutover` prints as JSON (and the admin console as rows).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub epoch: u64,
    pub dry_run: bool,
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub lsn: Option<String>,
    pub steps: Vec<StepTime>,
    /// From the hold's start to the release of the held writes.
    pub hold_seconds: f64,
    pub catchup_seconds: f64,
    /// How far behind the recorded position the CI standby leader was when it was read.
    pub catchup_bytes: u64,
    pub instances: Vec<String>,
}

impl Report {
    pub fn outcome(&self) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.label() == self.outcome)
    }

    pub fn add(&mut self, step: Step, seconds: f64, detail: String) {
        self.steps.push(StepTime {
            step: step.label(),
            seconds,
            detail,
        });
    }
}
