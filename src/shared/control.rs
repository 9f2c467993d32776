//! Operator control over sessions, beside the pipeline: the client registry behind SHOW CLIENTS
//! and KILL, and the PAUSE/RESUME gate that holds new transactions of a target before checkout.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::signal::Signal;
use crate::route::{Actor, Target};

/// What SHOW CLIENTS lists about one client; `state` and `target` change per transaction.
pub struct ClientEntry {
    pub user: String,
    pub database: String,
    pub peer: SocketAddr,
    pub since: SystemTime,
    /// 0 idle, 1 waiting for a server, 2 active (holding one).
    pub state: AtomicU8,
    /// `Target as u8 + 1` of the last server, 0 for none.
    pub target: AtomicU8,
    pub kill: Signal,
    /// Told once on SIGTERM/SHUTDOWN: the session closes at its next idle point (between
    /// transactions), so a transaction that has started is never cut.
    pub drain: Signal,
    /// The client's actor and connection roll, for its rollout sides; changes only on
    /// `SET`/`RESET pgdecomp.actor`.
    /// Shared with the client (an `Arc`): every client's entry would otherwise copy its
    /// actor's strings.
    rollout: Mutex<(Arc<Actor>, f64)>,
}

/// Clients logged in per user and per database (max_user_connections, max_db_connections),
/// looked up by name without building a key per login.
#[derive(Default)]
struct LoginCounts {
    users: HashMap<String, usize>,
    databases: HashMap<String, usize>,
}

/// Counts one more for `name`; its key is allocated only for the first.
fn add(map: &mut HashMap<String, usize>, name: &str) {
    match map.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            map.insert(name.to_string(), 1);
        }
    }
}

impl ClientEntry {
    pub fn set(&self, state: u8, target: Option<Target>) {
        self.state.store(state, Ordering::Relaxed);
        self.target
            .store(target.map_or(0, |t| t as u8 + 1), Ordering::Relaxed);
    }

    pub fn set_rollout(&self, actor: &Arc<Actor>, client_roll: f64) {
        *self.rollout.lock().unwrap_or_else(|p| p.into_inner()) = (actor.clone(), client_roll);
    }

    /// The actor and connection roll SHOW CLIENTS describes the sides with.
    pub fn rollout(&self) -> (Arc<Actor>, f64) {
        self.rollout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn target(&self) -> Option<Target> {
        match self.target.load(Ordering::Relaxed) {
            0 => None,
            n => Target::ALL.get(usize::from(n - 1)).copied(),
        }
    }
}

/// Clients, pause state and running transactions per target.
pub struct Control {
    clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    /// Bit `1 << target` set while that target is paused, for the clients that wait.
    paused: watch::Sender<u8>,
    /// The same bits, read by every transaction after it counts itself in (see `admitted`).
    paused_bits: AtomicU8,
    active: [AtomicUsize; 4],
    draining: std::sync::atomic::AtomicBool,
    /// Logged-in clients per user and per database.
    counts: Mutex<LoginCounts>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            clients: Mutex::default(),
            paused: watch::Sender::new(0),
            paused_bits: AtomicU8::new(0),
            active: Default::default(),
            draining: Default::default(),
            counts: Mutex::default(),
        }
    }
}

impl Control {
    pub fn register(
        &self,
        id: u64,
        user: &str,
        database: &str,
        peer: SocketAddr,
        rollout: (Arc<Actor>, f64),
    ) -> Arc<ClientEntry> {
        let entry = Arc::new(ClientEntry {
            user: user.to_string(),
            database: database.to_string(),
            peer,
            since: SystemTime::now(),
            state: AtomicU8::new(0),
            target: AtomicU8::new(0),
            kill: Signal::default(),
            drain: Signal::default(),
            rollout: Mutex::new(rollout),
        });
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry.clone());
        if self.draining() {
            // Logged in while draining: it leaves at its first idle point, i.e. at once.
            entry.drain.raise();
        }
        entry
    }

    /// Takes one of `user`'s and one of `database`'s places when both are below their limits
    /// (0: none), in one step, so logins racing each other cannot pass a limit together. The
    /// place is freed by `unregister` of the client that registers with it, or `release`.
    pub fn reserve(
        &self,
        user: &str,
        database: &str,
        (max_user, max_db): (usize, usize),
    ) -> Result<(), &'static str> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let of = |map: &HashMap<String, usize>, name: &str| map.get(name).copied().unwrap_or(0);
        if max_user > 0 && of(&counts.users, user) >= max_user {
            return Err("max_user_connections");
        }
        if max_db > 0 && of(&counts.databases, database) >= max_db {
            return Err("max_db_connections");
        }
        add(&mut counts.users, user);
        add(&mut counts.databases, database);
        Ok(())
    }

    /// Frees a place `reserve` took for a login that did not register.
    pub fn release(&self, user: &str, database: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        Self::decrement(&mut counts, user, database);
    }

    fn decrement(counts: &mut LoginCounts, user: &str, database: &str) {
        for (map, name) in [(&mut counts.users, user), (&mut counts.databases, database)] {
            if let Some(n) = map.get_mut(name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(name);
                }
            }
        }
    }

    pub fn unregister(&self, id: u64) {
        let gone = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(e) = gone {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            Self::decrement(&mut counts, &e.user, &e.database);
        }
    }

    pub fn client(&self, id: u64) -> Option<Arc<ClientEntry>> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn clients(&self) -> Vec<(u64, Arc<ClientEntry>)> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = clients.iter().map(|(id, e)| (*id, e.clone())).collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// Disconnects one client (by id) or every client whose last server was `target`.
    /// Stops new work: every client is told to leave at its next idle point (a permit is kept
    /// for clients that are mid-transaction now, and for those registering later).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        for (_, e) in self.clients() {
            e.drain.raise();
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn kill(&self, which: KillTarget) -> usize {
        let mut n = 0;
        for (id, e) in self.clients() {
            let hit = match which {
                KillTarget::Client(c) => c == id,
                KillTarget::Target(t) => e.target() == Some(t),
                KillTarget::All => true,
            };
            if hit {
                e.kill.raise();
                n += 1;
            }
        }
        n
    }

    /// Waits while `target` is paused. Held clients see no error, only a delay.
    pub async fn wait_unpaused(&self, target: Target) {
        let bit = 1u8 << (target as u8);
        if self.paused_bits.load(Ordering::Relaxed) & bit == 0 {
            // Nothing paused (the common case): no subscription, no lock.
            return;
        }
        let mut rx = self.paused.subscribe();
        while *rx.borrow_and_update() & bit != 0 {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Counts a running transaction until the guard drops (also when a KILL drops the session).
    pub fn begin(&self, target: Target) -> ActiveGuard<'_> {
        self.active[target as usize].fetch_add(1, Ordering::SeqCst);
        ActiveGuard {
            counter: &self.active[target as usize],
        }
    }

    /// Whether a transaction counted by `begin` may run. A transaction counts itself first and
    /// looks at the pause second, while PAUSE sets the pause first and reads the count second
    /// (all SeqCst): so either PAUSE sees it running and waits for it, or it sees the pause and
    /// gives way. It cannot slip past a PAUSE that counted zero.
    pub fn admitted(&self, target: Target) -> bool {
        self.paused_bits.load(Ordering::SeqCst) & (1u8 << (target as u8)) == 0
    }

    pub fn active(&self, target: Target) -> usize {
        self.active[target as usize].load(Ordering::SeqCst)
    }

    pub fn paused(&self) -> u8 {
        *self.paused.borrow()
    }

    /// Holds new transactions of `targets` and waits (bounded) for running ones to finish.
    /// Returns how many were still running when `timeout` passed (0 = fully paused).
    pub async fn pause(&self, targets: &[Target], timeout: Duration) -> usize {
        let mask = targets.iter().fold(0u8, |m, t| m | (1 << (*t as u8)));
        self.paused_bits.fetch_or(mask, Ordering::SeqCst);
        self.paused.send_modify(|p| *p |= mask);
        let deadline = Instant::now() + timeout;
        loop {
            let running: usize = targets.iter().map(|t| self.active(*t)).sum();
            if running == 0 || Instant::now() >= deadline {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn resume(&self, targets: &[Target]) {
        let mask = targets.iter().fold(0u8, |m, t| m | (1 << (*t as u8)));
        self.paused_bits.fetch_and(!mask, Ordering::SeqCst);
        self.paused.send_modify(|p| *p &= !mask);
    }
}

pub struct ActiveGuard<'a> {
    counter: &'a AtomicUsize,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Which clients KILL disconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillTarget {
    All,
    Client(u64),
    Target(Target),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transaction_counted_before_pause_is_waited_for_and_one_after_gives_way() {
        let control = Control::default();
        let early = control.begin(Target::Ci);
        assert!(control.admitted(Target::Ci));
        // PAUSE reads the count after setting the pause: the early transaction is seen.
        assert_eq!(control.pause(&[Target::Ci], Duration::ZERO).await, 1);
        let late = control.begin(Target::Ci);
        assert!(
            !control.admitted(Target::Ci),
            "a transaction counted after PAUSE gives way"
        );
        assert!(control.admitted(Target::Main), "other targets run on");
        drop(late);
        drop(early);
        assert_eq!(control.active(Target::Ci), 0);
    }

    #[tokio::test]
    async fn resume_lets_waiting_transactions_go() {
        let control = Arc::new(Control::default());
        control.pause(&[Target::Main], Duration::ZERO).await;
        let c2 = control.clone();
        let waiting = tokio::spawn(async move { c2.wait_unpaused(Target::Main).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        control.resume(&[Target::Main]);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released within 5 s")
            .expect("task ran");
        assert!(control.admitted(Target::Main));
    }
}
