//! Proxy-wide state beside the pipeline, in front of the session: connections that have not
//! finished logging in, and failed logins per address. Half-open connections get their own
//! bounded queue, the oldest evicted first, so they can never use up the slots of logged-in
//! clients or lock new logins out; repeated wrong passwords from one address are slowed down.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Failures from one address within this window count together.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failures answered at once before the delays start (typos happen).
const FREE_FAILURES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Addresses remembered at most; beyond it the stale ones are forgotten first.
const MAX_ADDRESSES: usize = 10_000;

/// How long to hold the answer to the `count`-th failed login of an address in the window:
/// nothing for the first few, then doubling from 100 ms up to 5 s.
pub fn failure_delay(count: u32) -> Duration {
    match count.checked_sub(FREE_FAILURES + 1) {
        None => Duration::ZERO,
        Some(n) => FIRST_DELAY.saturating_mul(1u32 << n.min(16)).min(MAX_DELAY),
    }
}

#[derive(Default)]
pub struct Logins {
    /// Connections waiting on their client (startup packet, password), oldest first.
    waiting: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next: AtomicU64,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// One connection's place in the login queue; leaving it (or dropping it) frees the place.
pub struct PendingLogin<'a> {
    logins: &'a Logins,
    id: u64,
    evicted: Arc<Notify>,
}

impl Logins {
    /// Queues a new connection; when `cap` are already waiting on their clients, the oldest is
    /// told to go. Returns the place and whether someone was evicted.
    pub fn enter(&self, cap: usize) -> (PendingLogin<'_>, bool) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted_any = false;
        while waiting.len() >= cap.max(1) {
            if let Some((_, oldest)) = waiting.pop_front() {
                oldest.notify_one();
                evicted_any = true;
            }
        }
        waiting.push_back((id, evicted.clone()));
        let place = PendingLogin {
            logins: self,
            id,
            evicted,
        };
        (place, evicted_any)
    }

    /// Counts a failed login of `ip` and returns how long to hold its answer.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_ADDRESSES {
            failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
            if failures.len() >= MAX_ADDRESSES {
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        failure_delay(entry.0)
    }

    /// Connections waiting on their clients now.
    pub fn waiting(&self) -> usize {
        self.waiting.lock().map_or(0, |w| w.len())
    }
}

impl PendingLogin<'_> {
    /// Resolves when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }

    /// Leaves the queue: the connection now waits on the proxy (a server), not its client, and
    /// can no longer be evicted.
    pub fn leave(&self) {
        let mut waiting = self
            .logins
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(at) = waiting.iter().position(|(id, _)| *id == self.id) {
            waiting.remove(at);
        }
    }
}

impl Drop for PendingLogin<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_a_few_failures_and_are_bounded() {
        let got: Vec<u128> = (1..=12).map(|n| failure_delay(n).as_millis()).collect();
        assert_eq!(
            got,
            [0, 0, 0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        assert_eq!(failure_delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn failures_count_per_address() {
        let logins = Logins::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..4 {
            logins.failed(a);
        }
        assert_eq!(logins.failed(a), Duration::from_millis(200));
        assert_eq!(logins.failed(b), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_oldest_waiting_connection_is_evicted_when_full() {
        let logins = Logins::default();
        let (first, evicted) = logins.enter(2);
        assert!(!evicted);
        let (second, _) = logins.enter(2);
        second.leave();
        let (_third, evicted) = logins.enter(2);
        assert!(!evicted, "a connection that left the queue does not count");
        let (_fourth, evicted) = logins.enter(2);
        assert!(evicted);
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest is told to go");
        assert_eq!(logins.waiting(), 2);
    }
}
