//! Between route and pool: which server plays which role right now. Route picks a target
//! (main, ci, main_replica, ci_replica); `select` turns it into a server address using the
//! current `View`, which the health checker (`checker`, with Patroni discovery in `patroni`)
//! replaces every round. `ryw` keeps each client's reads behind its own writes.

mod archive;
pub mod checker;
pub mod lsn;
pub mod patroni;
pub mod ryw;
pub mod select;
#[cfg(test)]
mod tests;
pub mod throttle;
pub mod view;
pub mod watch;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use lsn::Lsn;
pub use ryw::ReadYourWrites;
pub use select::{pick, Need, Pick, Via};
pub use view::{ClusterId, Health, Node, NodeState, Role, View};

/// Owned by config (it is `[health]` validated); the checker reads it.
pub use crate::config::HealthSettings;

/// The published view and a signal for sessions waiting for it to change.
pub struct Topology {
    view: ArcSwap<View>,
    changed: tokio::sync::watch::Sender<u64>,
    /// Asks the health checker for a round now rather than after its interval.
    recheck: tokio::sync::Notify,
}

impl Topology {
    pub fn new(initial: View) -> Self {
        Self {
            view: ArcSwap::from_pointee(initial),
            changed: tokio::sync::watch::Sender::new(0),
            recheck: tokio::sync::Notify::new(),
        }
    }

    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The published view's slot, for a reader that keeps the view between reads
    /// (`arc_swap::cache::Cache`).
    pub fn view_swap(&self) -> &ArcSwap<View> {
        &self.view
    }

    /// Publishes `next`; returns whether anything differed (waiting sessions are woken then).
    pub fn publish(&self, next: View) -> bool {
        if **self.view.load() == next {
            return false;
        }
        self.view.store(Arc::new(next));
        self.changed.send_modify(|g| *g += 1);
        true
    }

    /// Asks for a health round now: after a phase switch (the cutover's promotion) sessions
    /// waiting for the new writer should not wait out the interval.
    pub fn recheck(&self) {
        self.recheck.notify_one();
    }

    /// Completes when `recheck` was asked for (a request made while no one waited counts).
    pub async fn recheck_asked(&self) {
        self.recheck.notified().await;
    }

    /// A receiver that wakes on every publish that changed something.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
