//! Pipeline step 3 (client → framing → classify → **route** → pool → server): the `Decision`
//! that `route` (in `policy`) returns, and the `Reason` it gives. Value types only.

use super::phase::RolloutPick;
use super::violation::Violation;
use super::{Group, Target};

/// Why a target was chosen; `label()` is the metric/log value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Plain read outside a transaction: the group's read target.
    Read,
    /// Anything else (write, locking read, DDL, session/utility, first statement of a
    /// transaction): the group's write target.
    Write,
    /// Inside a transaction: the connection chosen at its first statement.
    Pinned,
    /// A ci rollout below 100 % kept this statement on the old target.
    RolloutFallback,
    /// The statement did not parse: the main primary (fail closed).
    Unparsable,
    /// No main or ci tables: the session's current group decided.
    SessionGroup,
    /// A per-db_config connection: its config decided the group.
    DbConfig,
    /// BEGIN/START opening a transaction: hold it back until the first statement picks the
    /// server, then send it there first. `target` is only a hint.
    BeginDeferred,
}

impl Reason {
    /// Position in a fixed table, for pre-resolved metric handles.
    pub fn index(&self) -> usize {
        *self as usize
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Pinned => "pinned",
            Self::RolloutFallback => "rollout_fallback",
            Self::Unparsable => "unparsable",
            Self::SessionGroup => "session_group",
            Self::DbConfig => "db_config",
            Self::BeginDeferred => "begin_deferred",
        }
    }
}

/// Where one query string runs, why, and which rules it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub target: Target,
    /// The group the statement belongs to (by tables, connection or session); a pinned
    /// transaction's target may belong to the other group.
    pub group: Group,
    pub reason: Reason,
    /// The side a partial ci rollout put the statement on (counted per side); `None` when no
    /// rollout below 100 % decided it (main, pinned, unparsable, a deferred BEGIN).
    pub rollout: Option<RolloutPick>,
    /// Empty (and unallocated) for almost every statement.
    pub violations: Vec<Violation>,
}

impl Decision {
    /// The first enforced violation: send its `pg_error` instead of running the statement.
    pub fn rejected(&self) -> Option<&Violation> {
        self.violations
            .iter()
            .find(|v| v.mode == super::Mode::Enforce)
    }
}
