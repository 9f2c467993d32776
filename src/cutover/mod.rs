//! The phase-7 cutover beside the pipeline: one operation that holds the fleet's ci writes,
//! lets the CI standby replay main's last write, promotes it, switches every instance to
//! phase 7 and releases the held writes to the promoted CI primary, coordinated through etcd
//! (`[fleet]`). Pure parts: `steps.rs`, `preflight.rs`, `record.rs`; I/O: `store.rs` (etcd),
//! `ops.rs` (servers), `coordinator.rs` with `barrier.rs`, `forward.rs` and `switch.rs`. The
//! instances' side of the hold lives in `shared/hold.rs` and `fleet/hold.rs`.

mod barrier;
pub mod cli;
mod coordinator;
mod forward;
mod ops;
mod preflight;
mod record;
mod settings;
mod steps;
mod store;
mod switch;

use std::time::{SystemTime, UNIX_EPOCH};

pub use coordinator::{run, Progress};
pub use preflight::{check, Facts, Member};
pub use record::{HeldAck, Record, Report, StepTime};
pub use settings::{settings, CutoverSettings, RawCutover};
pub use steps::{OnFailure, Outcome, Step};

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
