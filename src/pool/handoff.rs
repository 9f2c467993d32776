//! Pipeline step 4 (… → route → **pool** → server): the clients waiting for a full pool, in
//! arrival order, each handed the connection another client releases. Only where the stash is
//! on (a current-thread runtime). A release goes straight to the longest waiter: no trip through
//! deadpool's semaphore, idle queue, hooks and wait timer, which cost a waiting transaction about
//! 1,300 instructions. deadpool still owns every connection: when one leaves the pool (closed as
//! broken or expired, or failing to open), the longest waiter is told to ask deadpool again, as
//! there is room to open one now. A wait's limit (query_wait_timeout) is kept as a deadline in
//! its slot and enforced by a sweep a few times a second, as PgBouncer's janitor does, rather
//! than by a timer per wait: arming and clearing a timer cost a waiting transaction about 750
//! instructions.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use deadpool::managed::Object;

use super::manager::ServerManager;

type Conn = Object<ServerManager>;

/// The waiters of one pool, the longest waiting first.
#[derive(Default)]
pub struct Queue(Mutex<VecDeque<Arc<Slot>>>);

/// One client's place in a queue. The client keeps it across its waits (dropped when it goes
/// quiet), so a wait allocates nothing.
#[derive(Default)]
pub struct Slot(Mutex<State>);

#[derive(Default)]
enum State {
    /// Not in a queue.
    #[default]
    Out,
    /// Queued until `deadline` (none: no limit); woken through the waker of its last poll.
    Waiting {
        waker: Option<Waker>,
        deadline: Option<Instant>,
    },
    /// A released connection, handed over.
    Handed(Conn),
    /// Room to open a connection: ask deadpool again.
    Retry,
    /// The deadline passed.
    Expired,
}

impl Slot {
    /// Gives a waiter what it waited for, and wakes it. A slot leaves its queue only through
    /// `Queue::first` or when its wait ends, so one just taken out is waiting.
    fn fill(&self, next: State) {
        let was = std::mem::replace(&mut *lock(&self.0), next);
        if let State::Waiting { waker: Some(w), .. } = was {
            w.wake();
        }
    }
}

/// What a wait in the queue brought.
pub enum Got {
    Conn(Conn),
    Retry,
    Expired,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }

    /// Hands `conn` to the longest waiter; gives it back when nobody waits.
    pub fn hand(&self, conn: Conn) -> Result<(), Conn> {
        match self.first() {
            Some(slot) => {
                slot.fill(State::Handed(conn));
                Ok(())
            }
            None => Err(conn),
        }
    }

    /// Tells the longest waiter to ask deadpool again (a connection left the pool).
    pub fn retry_one(&self) {
        if let Some(slot) = self.first() {
            slot.fill(State::Retry);
        }
    }

    /// Tells every waiter to ask deadpool again (the pool is closing: they learn it there).
    pub fn retry_all(&self) {
        while let Some(slot) = self.first() {
            slot.fill(State::Retry);
        }
    }

    /// Ends the waits whose deadline is past `now`.
    pub fn expire(&self, now: Instant) {
        lock(&self.0).retain(|slot| {
            let mut state = lock(&slot.0);
            let State::Waiting {
                deadline: Some(at), ..
            } = &*state
            else {
                return true;
            };
            if *at > now {
                return true;
            }
            if let State::Waiting { waker: Some(w), .. } =
                std::mem::replace(&mut *state, State::Expired)
            {
                w.wake();
            }
            false
        });
    }

    /// Takes the longest waiter out of the queue.
    fn first(&self) -> Option<Arc<Slot>> {
        lock(&self.0).pop_front()
    }

    /// Queues `slot` (at the front when it was already first in line) and waits for a
    /// connection, a retry, or `deadline`.
    pub fn wait<'a>(
        &'a self,
        slot: &'a Arc<Slot>,
        front: bool,
        deadline: Option<Instant>,
    ) -> Wait<'a> {
        *lock(&slot.0) = State::Waiting {
            waker: None,
            deadline,
        };
        let mut q = lock(&self.0);
        match front {
            true => q.push_front(slot.clone()),
            false => q.push_back(slot.clone()),
        }
        Wait { queue: self, slot }
    }
}

/// A client's wait in a queue. Ended early (its timer fired, or the client left), it takes the
/// slot out of the queue and passes on what was handed to it meanwhile.
pub struct Wait<'a> {
    queue: &'a Queue,
    slot: &'a Arc<Slot>,
}

impl Future for Wait<'_> {
    type Output = Got;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Got> {
        let mut state = lock(&self.slot.0);
        match std::mem::take(&mut *state) {
            State::Handed(c) => Poll::Ready(Got::Conn(c)),
            State::Retry | State::Out => Poll::Ready(Got::Retry),
            State::Expired => Poll::Ready(Got::Expired),
            State::Waiting { waker, deadline } => {
                let waker = match waker {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *state = State::Waiting {
                    waker: Some(waker),
                    deadline,
                };
                Poll::Pending
            }
        }
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let left = std::mem::take(&mut *lock(&self.slot.0));
        match left {
            State::Out | State::Expired => {}
            State::Waiting { .. } => lock(&self.queue.0).retain(|s| !Arc::ptr_eq(s, self.slot)),
            // To the next waiter, else into the stash.
            State::Handed(c) => super::stash::release(c),
            State::Retry => self.queue.retry_one(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn polled(w: &mut Wait<'_>) -> Poll<&'static str> {
        Pin::new(w).poll(&mut noop()).map(|g| match g {
            Got::Conn(_) => "conn",
            Got::Retry => "retry",
            Got::Expired => "expired",
        })
    }

    #[test]
    fn waiters_are_served_in_arrival_order_and_a_retry_reaches_the_first() {
        let q = Queue::default();
        let (a, b) = (Arc::new(Slot::default()), Arc::new(Slot::default()));
        let mut wa = q.wait(&a, false, None);
        let mut wb = q.wait(&b, false, None);
        assert_eq!(
            (polled(&mut wa), polled(&mut wb)),
            (Poll::Pending, Poll::Pending)
        );
        q.retry_one();
        assert_eq!(polled(&mut wa), Poll::Ready("retry"));
        assert_eq!(polled(&mut wb), Poll::Pending);
        assert_eq!(q.len(), 1);
        drop(wa);
        // Back in line at the front, ahead of b.
        let mut wa = q.wait(&a, true, None);
        q.retry_one();
        assert_eq!(
            (polled(&mut wa), polled(&mut wb)),
            (Poll::Ready("retry"), Poll::Pending)
        );
    }

    #[test]
    fn an_abandoned_wait_leaves_the_queue_and_passes_its_retry_on() {
        let q = Queue::default();
        let (a, b) = (Arc::new(Slot::default()), Arc::new(Slot::default()));
        let wa = q.wait(&a, false, None);
        let mut wb = q.wait(&b, false, None);
        q.retry_one();
        // a was told to retry but left before it looked: b is told instead.
        drop(wa);
        assert_eq!(polled(&mut wb), Poll::Ready("retry"));
        drop(wb);
        assert_eq!(q.len(), 0);
        let wa = q.wait(&a, false, None);
        drop(wa);
        assert_eq!(
            q.len(),
            0,
            "a wait ended early takes its slot out of the queue"
        );
        assert!(q.first().is_none());
    }

    #[test]
    fn retry_all_empties_the_queue() {
        let q = Queue::default();
        let slots: Vec<_> = (0..3).map(|_| Arc::new(Slot::default())).collect();
        let mut waits: Vec<_> = slots.iter().map(|s| q.wait(s, false, None)).collect();
        q.retry_all();
        assert_eq!(q.len(), 0);
        for w in &mut waits {
            assert_eq!(polled(w), Poll::Ready("retry"));
        }
    }

    #[test]
    fn the_sweep_ends_only_the_waits_past_their_deadline() {
        let q = Queue::default();
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(5);
        let (a, b, c) = (
            Arc::new(Slot::default()),
            Arc::new(Slot::default()),
            Arc::new(Slot::default()),
        );
        let mut wa = q.wait(&a, false, Some(now));
        let mut wb = q.wait(&b, false, Some(later));
        let mut wc = q.wait(&c, false, None);
        q.expire(now);
        assert_eq!(polled(&mut wa), Poll::Ready("expired"));
        assert_eq!(
            (polled(&mut wb), polled(&mut wc)),
            (Poll::Pending, Poll::Pending)
        );
        assert_eq!(q.len(), 2);
        q.expire(later);
        assert_eq!(
            (polled(&mut wb), polled(&mut wc)),
            (Poll::Ready("expired"), Poll::Pending)
        );
        assert_eq!(q.len(), 1, "a wait without a limit stays");
    }
}
