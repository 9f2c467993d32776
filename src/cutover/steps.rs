//! The cutover's steps as a pure sequence: which step follows which, which are skipped by a
//! rehearsal, what a failure in each means (abort before the promotion, retry from it on) and
//! which setting bounds each. No I/O here; `coordinator.rs` carries the steps out.

use std::time::Duration;

use super::settings::CutoverSettings;

/// One step of the cutover, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Preflight,
    Hold,
    ReadLsn,
    Catchup,
    Promote,
    Fence,
    Switch,
    Release,
}

/// What a failed step leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Nothing has changed on the servers yet: release the held writes on the old phase.
    Abort,
    /// The CI cluster may be promoted: going back would split the data; try again.
    Retry,
}

/// How a cutover ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Rehearsed,
    Aborted,
    Refused,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Completed,
        Outcome::Rehearsed,
        Outcome::Aborted,
        Outcome::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Rehearsed => "rehearsed",
            Outcome::Aborted => "aborted",
            Outcome::Refused => "refused",
        }
    }

    /// The process exit code of `pgdecomp cutover`.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Completed | Outcome::Rehearsed => 0,
            Outcome::Aborted => 1,
            Outcome::Refused => 2,
        }
    }
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Preflight,
        Step::Hold,
        Step::ReadLsn,
        Step::Catchup,
        Step::Promote,
        Step::Fence,
        Step::Switch,
        Step::Release,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Hold => "hold",
            Step::ReadLsn => "read_lsn",
            Step::Catchup => "catchup",
            Step::Promote => "promote",
            Step::Fence => "fence",
            Step::Switch => "switch",
            Step::Release => "release",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|st| st.label() == s)
    }

    /// The step after this one; a rehearsal goes from the catch-up straight to the release.
    pub fn next(self, dry_run: bool) -> Option<Step> {
        match self {
            Step::Catchup if dry_run => Some(Step::Release),
            Step::Release => None,
            s => Step::ALL.get(s as usize + 1).copied(),
        }
    }

    /// Before the promotion a failure aborts; from it on the cutover only goes forward.
    pub fn on_failure(self) -> OnFailure {
        if self < Step::Promote {
            OnFailure::Abort
        } else {
            OnFailure::Retry
        }
    }

    /// The bound of this step (for the forward-only steps: how long before it is reported
    /// overdue; they go on trying after it).
    pub fn timeout(self, s: &CutoverSettings, request: Duration) -> Duration {
        match self {
            Step::Preflight | Step::ReadLsn | Step::Release => request * 2,
            Step::Hold => s.hold_timeout,
            Step::Catchup => s.catchup_timeout,
            Step::Promote | Step::Fence => s.promote_timeout,
            Step::Switch => s.switch_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(dry_run: bool) -> Vec<&'static str> {
        let mut out = vec![];
        let mut s = Some(Step::Preflight);
        while let Some(st) = s {
            out.push(st.label());
            s = st.next(dry_run);
        }
        out
    }

    #[test]
    fn a_cutover_walks_every_step_and_a_rehearsal_skips_promotion_and_switch() {
        assert_eq!(
            walk(false),
            [
                "preflight",
                "hold",
                "read_lsn",
                "catchup",
                "promote",
                "fence",
                "switch",
                "release"
            ]
        );
        assert_eq!(
            walk(true),
            ["preflight", "hold", "read_lsn", "catchup", "release"]
        );
    }

    #[test]
    fn failures_abort_before_the_promotion_and_retry_from_it() {
        for s in Step::ALL {
            let want = if s < Step::Promote {
                OnFailure::Abort
            } else {
                OnFailure::Retry
            };
            assert_eq!(s.on_failure(), want, "{s:?}");
            assert_eq!(Step::parse(s.label()), Some(s));
        }
        assert_eq!(Outcome::Refused.exit_code(), 2);
        assert_eq!(Outcome::Aborted.exit_code(), 1);
        assert_eq!(Outcome::Rehearsed.exit_code(), 0);
    }
}
