//! Pipeline step 3 (client → framing → classify → **route** → pool → server): the per-session
//! state `route` reads, and the pure transitions a session applies after each statement.

use crate::classify::Classification;

use super::decision::{Decision, Reason};
use super::phase::{ActorRolls, Rolls};
use super::schemas::SchemaMask;
use super::txn::TxnTracker;
use super::{Group, Target};

/// How the client chose its database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConnectionKind {
    /// One logical database; each statement is routed by its tables.
    #[default]
    Transparent,
    /// A logical database mapped to `main` or `ci` (GitLab's database.yml entries): the
    /// connection's config decides the group and its schemas are validated against it.
    DbConfig(Group),
}

/// The server connection a transaction is bound to, and the group it was chosen for (a ci
/// transaction may sit on `main` by rollout; the shadow phase re-maps by group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pinned {
    pub target: Target,
    pub group: Group,
}

/// Transaction state as routing sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TxnState {
    #[default]
    Idle,
    /// `pinned` is `None` between a held-back BEGIN and the first statement sent to a server.
    InTransaction { pinned: Option<Pinned> },
}

/// Everything per session that routing depends on. Cloning copies the transaction's written
/// table list, which is empty outside transactions.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteState {
    pub connection: ConnectionKind,
    pub txn: TxnState,
    /// Group of the last statement that touched main or ci tables; shared/internal-only and
    /// table-less statements follow it.
    pub current_group: Group,
    /// Stable per client connection, in [0, 100): `client` rollout mode.
    pub client_roll: f64,
    /// Fresh per transaction (or per statement outside one), in [0, 100): `random` mode.
    pub txn_roll: f64,
    /// The client's actor hashes (`actor` mode and allow lists), recomputed only when the
    /// actor changes.
    pub actor: ActorRolls,
    /// Writes of the open transaction, for the cross-database modification check.
    pub tracker: TxnTracker,
}

impl RouteState {
    pub fn new(connection: ConnectionKind, client_roll: f64) -> Self {
        let current_group = match connection {
            ConnectionKind::DbConfig(g) => g,
            ConnectionKind::Transparent => Group::Main,
        };
        Self {
            connection,
            txn: TxnState::Idle,
            current_group,
            client_roll,
            txn_roll: 0.0,
            actor: ActorRolls::default(),
            tracker: TxnTracker::default(),
        }
    }

    /// What the phase's rollouts look at, copied (no allocation).
    pub fn rolls(&self) -> Rolls {
        Rolls {
            client: self.client_roll,
            txn: self.txn_roll,
            actor: self.actor,
        }
    }

    pub fn pinned(&self) -> Option<Pinned> {
        match self.txn {
            TxnState::InTransaction { pinned } => pinned,
            TxnState::Idle => None,
        }
    }

    /// Applies a statement the session has handled with `decision`: tracks writes and depth,
    /// opens/pins/ends the transaction and moves `current_group`. A refused statement did not
    /// run, so it changes nothing. The session draws a new `txn_roll` whenever `txn` is `Idle`.
    pub fn after_statement(&mut self, c: &Classification, decision: &Decision) {
        if decision.rejected().is_some() {
            return;
        }
        self.tracker.observe(c);
        if SchemaMask::of_statement(c).group().is_some() {
            self.current_group = decision.group;
        }
        if !self.tracker.in_transaction() {
            self.txn = TxnState::Idle;
            return;
        }
        let sent = decision.reason != Reason::BeginDeferred;
        let pin = Pinned {
            target: decision.target,
            group: decision.group,
        };
        self.txn = match self.txn {
            TxnState::InTransaction { pinned: Some(p) } => {
                TxnState::InTransaction { pinned: Some(p) }
            }
            _ if sent => TxnState::InTransaction { pinned: Some(pin) },
            _ => TxnState::InTransaction { pinned: None },
        };
    }

    /// The server's ReadyForQuery status is the truth about transaction boundaries (errors,
    /// implicit transactions): `I` ends any transaction we thought was open.
    pub fn on_ready_for_query(&mut self, status: u8) {
        if status == b'I' {
            self.txn = TxnState::Idle;
            self.tracker.reset();
        }
    }
}
