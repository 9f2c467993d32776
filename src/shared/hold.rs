//! The cutover's hold beside the session step (… → route → **hold** → pool): while a cutover
//! holds them, new transactions on the ci write target wait before checkout (they are not
//! refused), and the transactions already running there are counted so the cutover knows
//! when none is left. Entering counts first and looks at the hold second, and holding sets the
//! hold first and counts second (both sequentially consistent), so a transaction can never
//! slip past a hold whose count said zero.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

/// The epoch an instance with `[fleet]` holds under until etcd has answered once: without
/// etcd it cannot know whether a cutover has happened, so it does not write ci rows anywhere.
pub const UNTIL_ETCD: u64 = u64::MAX;

/// Gate and count of the ci write target's transactions.
pub struct CiHold {
    /// 0: open; otherwise the epoch of the cutover holding.
    epoch: AtomicU64,
    running: AtomicUsize,
    waiting: AtomicUsize,
    /// The epoch, for waking waiters.
    changed: watch::Sender<u64>,
    /// Told whenever a running transaction ends while held.
    ended: Notify,
}

impl Default for CiHold {
    fn default() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            changed: watch::Sender::new(0),
            ended: Notify::new(),
        }
    }
}

/// One running transaction on the ci write target, until dropped.
pub struct Running<'a>(&'a CiHold);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, SeqCst) == 1 && self.0.held().is_some() {
            self.0.ended.notify_waiters();
        }
    }
}

impl CiHold {
    /// Counts a transaction in, waiting first while a hold is on. Returns how long it waited
    /// (`None`: it was not held).
    pub async fn enter(&self) -> (Running<'_>, Option<Duration>) {
        let mut since: Option<Instant> = None;
        loop {
            self.running.fetch_add(1, SeqCst);
            if self.epoch.load(SeqCst) == 0 {
                return (Running(self), since.map(|s| s.elapsed()));
            }
            drop(Running(self));
            since.get_or_insert_with(Instant::now);
            self.waiting.fetch_add(1, SeqCst);
            let mut rx = self.changed.subscribe();
            while *rx.borrow_and_update() != 0 {
                if rx.changed().await.is_err() {
                    break;
                }
            }
            self.waiting.fetch_sub(1, SeqCst);
        }
    }

    /// Holds new transactions under `epoch` (not 0).
    pub fn hold(&self, epoch: u64) {
        self.epoch.store(epoch.max(1), SeqCst);
        self.changed.send_replace(epoch.max(1));
    }

    /// Lets every held transaction go on.
    pub fn release(&self) {
        self.epoch.store(0, SeqCst);
        self.changed.send_replace(0);
    }

    /// The epoch holding now.
    pub fn held(&self) -> Option<u64> {
        match self.epoch.load(SeqCst) {
            0 => None,
            e => Some(e),
        }
    }

    pub fn running(&self) -> usize {
        self.running.load(SeqCst)
    }

    /// Transactions waiting for the hold to end.
    pub fn waiting(&self) -> usize {
        self.waiting.load(SeqCst)
    }

    /// Returns once no transaction runs on the ci write target (call after `hold`).
    pub async fn drained(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            // A bounded nap too: a notification can race the count's last decrement.
            let _ = tokio::time::timeout(Duration::from_millis(50), ended).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn open_gate_counts_and_uncounts() {
        let h = CiHold::default();
        let (r, waited) = h.enter().await;
        assert_eq!((h.running(), waited), (1, None));
        drop(r);
        assert_eq!(h.running(), 0);
    }

    #[tokio::test]
    async fn a_hold_waits_for_running_ones_and_holds_new_ones() {
        let h = Arc::new(CiHold::default());
        let (running, _) = h.enter().await;
        h.hold(7);
        let h2 = h.clone();
        let newcomer = tokio::spawn(async move {
            let (_r, waited) = h2.enter().await;
            waited.is_some()
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!((h.running(), h.waiting()), (1, 1));
        let drain = tokio::spawn({
            let h = h.clone();
            async move { h.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drain.is_finished(), "one transaction still runs");
        drop(running);
        tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .expect("drained once the running one ended")
            .expect("join");
        assert!(!newcomer.is_finished(), "still held");
        h.release();
        let waited = tokio::time::timeout(Duration::from_secs(2), newcomer)
            .await
            .expect("released")
            .expect("join");
        assert!(waited);
        assert_eq!((h.running(), h.waiting(), h.held()), (0, 0, None));
    }
}
