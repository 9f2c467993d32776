//! Session step (client → framing → **session** → classify → route → pool → server): one
//! client's protocol state as an I/O-free state machine. It takes client messages and server
//! replies and answers with actions: replies written for the client, bytes written for the
//! attached server, or a `Plan` to attach one. The async loops in `relay.rs` and `pump.rs` only
//! carry these out. Every execution (a Query, or a Bind of a prepared statement) is
//! classified, routed, checked and counted here, once.

#[cfg(any(test, feature = "fuzzing"))]
pub mod fake_pg;
mod forward;
#[cfg(any(test, feature = "fuzzing"))]
pub mod harness;
mod local;
mod memo;
mod outgoing;
mod plan;
mod refuse;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_batches;
#[cfg(test)]
mod tests_props;

use std::sync::Arc;

use bytes::BytesMut;

use super::prepared::{ClientStatements, StatementRegistry};
use super::scan::{ScanEvents, SegmentOwner, Tracker};
use crate::classify::{Classification, ClassifyCache, StatementKind};
use crate::config::{PoolMode, Snapshot};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::FrameError;
use crate::protocol::frontend::write_query;
use crate::protocol::TxnStatus;
use crate::route::{
    route, route_on, ConnectionKind, Decision, Group, Pinned, Reason, RouteState, Target, TxnState,
};
use crate::server::ServerStatements;

pub use outgoing::splice;
pub use plan::Plan;

/// One routed execution, as the observer sees it before the session applies it.
pub struct Execution<'a> {
    pub class: &'a Classification,
    pub decision: &'a Decision,
    pub sql: &'a str,
    pub snap: &'a Snapshot,
    /// The routing state the decision was made in.
    pub state: &'a RouteState,
}

/// Where executions are counted and logged (metrics in production, a tally in tests).
pub trait Observer {
    fn executed(&mut self, e: &Execution<'_>);
}

/// What the machine needs from the proxy for one step.
pub struct Ctx<'a> {
    pub cache: &'a ClassifyCache,
    pub registry: &'a StatementRegistry,
    pub observer: &'a mut (dyn Observer + Send),
}

/// A BEGIN the proxy answered itself; sent to the server the transaction's first statement
/// picks. `failed` after an error the proxy answered inside it (PostgreSQL's aborted state).
#[derive(Debug, PartialEq, Eq)]
enum Held {
    None,
    Begin { failed: bool },
}

/// The server connection the session is attached to, and the reply tracking for it.
#[derive(Debug)]
struct Attachment {
    pin: Pinned,
    tracker: Tracker,
    /// The client's unnamed statement has been parsed on this server connection.
    unnamed_here: bool,
    /// Attached for a batch that executes nothing: a Flush ending it gets a Sync of the
    /// proxy's, so the server is released and the next execution routed on its own.
    prepares: bool,
    /// A long client message left for the relay to send from the client's buffer, with the
    /// length of the server buffer it follows (see `outgoing.rs`).
    deferred: Option<(usize, bytes::Bytes)>,
}

/// The per-client protocol state, all of it.
pub struct Session {
    pub route: RouteState,
    /// The config of the current transaction (refreshed only between transactions).
    pub snap: Arc<Snapshot>,
    pool_mode: PoolMode,
    stmts: ClientStatements,
    held: Held,
    /// The held BEGIN's text, in a buffer reused across transactions.
    held_sql: String,
    link: Option<Attachment>,
    /// After an error in an extended batch: client messages are dropped until Sync, as
    /// PostgreSQL does.
    skip: bool,
    /// A statement that may have written was sent since the last `take_wrote`.
    wrote: bool,
    /// Classifications of SQL texts in the batch being planned and sent, keyed by where the
    /// text sits in its message: planning and forwarding look each up in the cache once.
    memo: Vec<(usize, usize, Arc<Classification>)>,
    /// Entries at the front of `memo` given by `remember` for the batch planned next.
    seeded: u8,
    /// From `plan` to `batch_done`: only then are the memo's addresses those of live messages.
    memo_open: bool,
    /// The last attachment's reply tracker, reused so attaching allocates nothing.
    spare: Option<Tracker>,
    /// The decision `plan` made for a lone Query, which its forwarding takes over.
    planned: Option<plan::Planned>,
}

impl Session {
    pub fn new(connection: ConnectionKind, snap: Arc<Snapshot>, client_roll: f64) -> Self {
        Self {
            route: RouteState::new(connection, client_roll),
            pool_mode: snap.pool_mode,
            stmts: ClientStatements::new(snap.max_client_prepared_statements),
            snap,
            held: Held::None,
            held_sql: String::new(),
            link: None,
            skip: false,
            wrote: false,
            // Grown on first use: a client that never runs a statement holds no memo.
            memo: Vec::new(),
            seeded: 0,
            memo_open: false,
            spare: None,
            planned: None,
        }
    }

    /// Between transactions: the newest config and a fresh roll for `random` rollouts.
    pub fn refresh(&mut self, current: &Arc<Snapshot>, txn_roll: impl FnOnce() -> f64) {
        if self.route.txn == TxnState::Idle && self.link.is_none() {
            // Compared first: the count of the snapshot every client shares is written only
            // when the config changed, not twice per transaction from every core.
            if !Arc::ptr_eq(&self.snap, current) {
                self.snap = current.clone();
            }
            if self.snap.phase.draws_txn_roll() {
                self.route.txn_roll = txn_roll();
            }
        }
    }

    /// Takes the config a cutover released this not yet attached transaction into, so it is
    /// placed by the phase that runs now rather than the one it was planned in.
    pub fn adopt(&mut self, snap: Arc<Snapshot>) {
        if self.link.is_none() {
            self.planned = None;
            self.snap = snap;
        }
    }

    /// The transaction status the client must be told in a ReadyForQuery the proxy writes.
    pub fn status(&self) -> TxnStatus {
        match (&self.link, &self.held) {
            (Some(a), Held::None) => TxnStatus::of(a.tracker.status),
            (_, Held::Begin { failed: true }) => TxnStatus::Failed,
            (_, Held::Begin { failed: false }) => TxnStatus::InTransaction,
            (None, Held::None) => TxnStatus::Idle,
        }
    }

    pub fn skipping(&self) -> bool {
        self.skip
    }

    pub fn pool_mode(&self) -> PoolMode {
        self.pool_mode
    }

    /// The target of the attached server connection.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn attached(&self) -> Option<Target> {
        self.link.as_ref().map(|a| a.pin.target)
    }

    /// The client went quiet between batches: what only a running batch uses (the memo, the
    /// spare reply tracker) is let go, to be grown again by the next busy period.
    pub fn rest(&mut self) {
        if self.link.is_none() {
            self.memo = Vec::new();
            self.seeded = 0;
            self.spare = None;
        }
    }

    /// Whether a possibly-writing statement was sent since the last call.
    pub fn take_wrote(&mut self) -> bool {
        std::mem::take(&mut self.wrote)
    }

    /// A Sync with nothing outstanding: answered by the proxy, ending any skip.
    pub fn lone_sync(&mut self, reply: &mut BytesMut) {
        self.skip = false;
        backend::ready_for_query(self.status().byte(), reply);
    }

    /// A batch that got no server: the error, and ReadyForQuery when the batch was complete
    /// (else its messages are skipped until Sync). Inside a held transaction it aborts it.
    pub fn refused_locally(&mut self, e: PgError, synced: bool, reply: &mut BytesMut) {
        e.encode(reply);
        self.fail_held();
        if synced {
            backend::ready_for_query(self.status().byte(), reply);
        } else {
            self.skip = true;
        }
    }

    /// Starts using a server connection for `target`. `hold_status`: the transaction's BEGIN
    /// stays held (the batch only prepares); otherwise a held BEGIN goes first.
    pub fn attach(&mut self, target: Target, group: Group, hold_status: bool, prepares: bool) {
        let mut tracker = self.spare.take().unwrap_or_default();
        tracker.reset();
        tracker.drop_idle_fatal = self.pool_mode == PoolMode::Transaction;
        if hold_status {
            tracker.hold_status = Some(self.status().byte());
        }
        self.link = Some(Attachment {
            pin: Pinned { target, group },
            tracker,
            unnamed_here: false,
            prepares,
            deferred: None,
        });
    }

    /// Writes the proxy's own query (a parameter sync); its replies never reach the client.
    pub fn proxy_query(&mut self, sql: &str, out: &mut BytesMut) {
        if let Some(a) = self.link.as_mut() {
            write_query(sql, out);
            a.tracker.close(SegmentOwner::Proxy);
        }
    }

    /// Sends the held BEGIN ahead of the batch that picked the server.
    pub fn send_held(&mut self, out: &mut BytesMut) {
        let Some(a) = self.link.as_mut() else { return };
        if a.tracker.hold_status.is_some() || self.held == Held::None {
            return;
        }
        write_query(&self.held_sql, out);
        a.tracker.close(SegmentOwner::Proxy);
        self.held = Held::None;
    }

    /// Walks server bytes into `out` for the client (see `Tracker::scan`) and follows the
    /// server's transaction status.
    pub fn scan(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        prepared: &mut ServerStatements,
        params: &mut std::collections::HashMap<String, String>,
    ) -> Result<ScanEvents, FrameError> {
        let Some(a) = self.link.as_mut() else {
            return Ok(ScanEvents::default());
        };
        let ev = a.tracker.scan(input, out, prepared, params)?;
        if let (Some(status), None) = (ev.client_status, a.tracker.hold_status) {
            self.route.on_ready_for_query(status);
        }
        Ok(ev)
    }

    /// Whether the next buffered client message (tag `next`) may go to the attached server
    /// now. In transaction pooling a request outside a transaction is never sent to the
    /// attached server: the server is released and the request routed afresh by its own
    /// tables. COPY data always flows.
    pub fn may_forward(&self, next: Option<u8>) -> bool {
        let Some(a) = &self.link else { return false };
        if next.is_some_and(|t| crate::protocol::Front::of(t).is_copy()) {
            return true;
        }
        if a.tracker.hold_status.is_some() {
            return a.tracker.client_open();
        }
        self.pool_mode == PoolMode::Session || a.tracker.status != b'I' || a.tracker.client_open()
    }

    /// No reply outstanding and the server idle: the attachment may end (`leaving`: the
    /// client is gone; otherwise only transaction pooling releases).
    pub fn may_release(&self, leaving: bool) -> bool {
        let Some(a) = &self.link else { return true };
        a.tracker.is_idle()
            && a.tracker.status == b'I'
            && (leaving || self.pool_mode == PoolMode::Transaction)
    }

    /// Ends the attachment after a clean release.
    pub fn detach(&mut self) {
        if let Some(a) = self.link.take() {
            if a.tracker.hold_status == Some(b'E') {
                self.held = Held::Begin { failed: true };
            }
            self.spare = Some(a.tracker);
        }
    }

    /// In session pooling one server serves the whole session: the group's write target.
    fn pool_target(&self, d: &Decision) -> Target {
        match self.pool_mode {
            PoolMode::Transaction => d.target,
            PoolMode::Session => {
                self.snap
                    .phase
                    .target_for(d.group, false, &self.route.rolls())
                    .0
            }
        }
    }
}

/// Routes one execution, reports it, and applies it to the routing state unless refused.
/// `on`: the attached server, which a statement that would go elsewhere cannot leave.
fn execute(
    route_state: &mut RouteState,
    snap: &Snapshot,
    wrote: &mut bool,
    class: &Classification,
    sql: &str,
    on: Option<Pinned>,
    observer: &mut dyn Observer,
) -> Decision {
    let step = (class, sql);
    execute_planned(route_state, snap, wrote, step, (on, None), observer)
}

/// `execute`, given the decision `plan` made for this execution in this same state, if any.
fn execute_planned(
    route_state: &mut RouteState,
    snap: &Snapshot,
    wrote: &mut bool,
    (class, sql): (&Classification, &str),
    (on, planned): (Option<Pinned>, Option<Decision>),
    observer: &mut dyn Observer,
) -> Decision {
    let phase = &snap.phase;
    let mut d = planned.unwrap_or_else(|| route(class, phase, route_state));
    if let Some(on) = on {
        if d.reason != Reason::BeginDeferred && d.target != on.target {
            d = route_on(class, phase, route_state, on);
        }
    }
    observer.executed(&Execution {
        class,
        decision: &d,
        sql,
        snap,
        state: route_state,
    });
    if d.rejected().is_none() {
        route_state.after_statement(class, &d);
        *wrote |= class.kind.strictness() >= StatementKind::LockingRead.strictness();
    }
    d
}
