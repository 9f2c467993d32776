//! Pipeline step 3 (client → framing → classify → **route** → pool → server): picks the target
//! for a statement or transaction from its classification, the phase and the session state.
//! Pure: no I/O, no globals, no metrics, no randomness (the session passes rolls in).
//!
//! Per query string the session does:
//! 1. `let d = route(&c, &phase, &state)`; if `phase.shadow()` is set, also
//!    `route_shadow(&c, &phase, &state)` and count it (never applied);
//! 2. if `d.rejected()` is `Some(v)`, send `v.pg_error(sql)`; otherwise hold a
//!    `Reason::BeginDeferred` BEGIN, or send to `d.target` (a held BEGIN first);
//! 3. `state.after_statement(&c, &d)`, and `state.on_ready_for_query(status)` on the server's
//!    ReadyForQuery. While `state.txn` is `Idle`, take a fresh phase snapshot and `txn_roll`.

mod decision;
mod phase;
mod policy;
mod schemas;
mod series;
mod state;
mod target;
mod txn;
mod violation;

pub use decision::{Decision, Reason};
pub use phase::{
    actor_hash, actor_point, Actor, ActorRolls, ActorSource, CiWriteHost, GroupTargets, Phase,
    PhaseError, Rollout, RolloutMode, RolloutName, RolloutPick, Rolls, Side,
};
pub use policy::{route, route_on, route_shadow};
pub use schemas::SchemaMask;
pub use series::{known_series, Series, MODES};
pub use state::{ConnectionKind, Pinned, RouteState, TxnState};
pub use target::*;
pub use txn::{CrossDbModification, TxnTracker};
pub use violation::{Mode, PgError, Violation, ViolationKind, MAX_SQL_IN_ERROR};

#[cfg(test)]
mod tests;
