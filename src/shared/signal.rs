//! Beside the pipeline: a one-shot signal to one session (KILL, drain) that costs the session
//! an atomic load, not a lock, each time its task wakes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// How many signals were ever raised, process-wide. A waiting session compares it with the
/// count it saw last before it reads its own flag: the counter is one line that every
/// session reads and almost none writes, so it stays cached, where each session's own flag
/// is a line of its own that the other clients' transactions have evicted by its next wake.
static RAISES: AtomicU64 = AtomicU64::new(0);

/// Raised once by the operator side; awaited by the session it is for.
#[derive(Default)]
pub struct Signal {
    raised: AtomicBool,
    notify: Notify,
}

impl Signal {
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        // After the flag: a session that sees the new count also sees the flag.
        RAISES.fetch_add(1, Ordering::AcqRel);
        // Stores a permit when the session is not waiting yet.
        self.notify.notify_one();
    }

    /// Ready once raised. A waiting `Notified` takes the Notify's lock on every poll, and the
    /// session polls this at each wake-up (several per transaction): it is polled only when
    /// some signal was raised since this one's flag was last read down.
    pub fn raised(&self) -> Raised<'_> {
        Raised {
            raised: &self.raised,
            notified: self.notify.notified(),
            seen: None,
        }
    }

    /// Runs `work` until it ends (`Some`) or the signal is raised first (`None`). Polls
    /// `work` first: its wake-ups are many, a signal's one.
    pub fn unless<F: Future>(&self, work: F) -> Unless<'_, F> {
        Unless {
            work,
            raised: self.raised(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Signal::unless`]: no larger than the work and the wait together,
    /// where a `select!` in an async fn adds its own state beside them.
    pub struct Unless<'a, F> {
        #[pin]
        work: F,
        #[pin]
        raised: Raised<'a>,
    }
}

impl<F: Future> Future for Unless<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.project();
        if let Poll::Ready(done) = me.work.poll(cx) {
            return Poll::Ready(Some(done));
        }
        me.raised.poll(cx).map(|()| None)
    }
}

pin_project_lite::pin_project! {
    /// The wait of [`Signal::raised`]; a named future, so it is no larger than the
    /// `Notified` it wraps plus a count.
    pub struct Raised<'a> {
        raised: &'a AtomicBool,
        #[pin]
        notified: Notified<'a>,
        // RAISES when the flag was last read down (and the task registered); `None` before.
        seen: Option<u64>,
    }
}

impl Future for Raised<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = self.project();
        // The count is read before the flag: a raise whose flag this read misses bumps the
        // count after it, and its notify_one wakes the task registered below.
        let raises = RAISES.load(Ordering::Acquire);
        if *me.seen == Some(raises) {
            return Poll::Pending;
        }
        if me.raised.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *me.seen = Some(raises);
        // Ready only once notified, which a raise does after it sets the flag.
        me.notified.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_a_waiting_task_and_one_raised_before() {
        let s = Arc::new(Signal::default());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.raised().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        s.raise();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        let early = Signal::default();
        early.raise();
        tokio::time::timeout(Duration::from_secs(5), early.raised())
            .await
            .expect("a signal raised before the wait is seen");
    }

    #[tokio::test]
    async fn stays_pending_when_polled_again_unraised() {
        let s = Signal::default();
        let mut wait = std::pin::pin!(s.raised());
        for _ in 0..3 {
            let polled = futures_util::poll!(wait.as_mut());
            assert!(polled.is_pending());
        }
        s.raise();
        assert!(futures_util::poll!(wait.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn another_signal_raised_leaves_this_one_waiting() {
        let (mine, other) = (Signal::default(), Signal::default());
        let mut wait = std::pin::pin!(mine.raised());
        assert!(futures_util::poll!(wait.as_mut()).is_pending());
        other.raise();
        // The process-wide count moved; this signal's own flag decides.
        assert!(futures_util::poll!(wait.as_mut()).is_pending());
        assert!(futures_util::poll!(wait.as_mut()).is_pending());
        mine.raise();
        assert!(futures_util::poll!(wait.as_mut()).is_ready());
    }

    /// A wait that starts while a raise is half done (flag and count set, the notify not sent
    /// yet) is ready once the raise completes.
    #[tokio::test]
    async fn a_raise_half_done_when_the_wait_starts_is_seen() {
        let s = Signal::default();
        let mut wait = std::pin::pin!(s.raised());
        s.raised.store(true, Ordering::Release);
        RAISES.fetch_add(1, Ordering::AcqRel);
        let first = futures_util::poll!(wait.as_mut());
        s.notify.notify_one();
        assert!(first.is_ready() || futures_util::poll!(wait.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn unless_gives_the_work_or_none_once_raised() {
        let s = Signal::default();
        assert_eq!(s.unless(async { 7 }).await, Some(7));
        let mut run = std::pin::pin!(s.unless(std::future::pending::<u8>()));
        assert!(futures_util::poll!(run.as_mut()).is_pending());
        s.raise();
        assert_eq!(run.await, None);
    }
}
