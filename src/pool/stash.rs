//! Pipeline step 4 (… → route → **pool** → server): the connections a pool's clients released
//! last, kept in front of deadpool. A checkout that finds one here skips deadpool's semaphore,
//! queue lock, hooks and clock reads: 6 % of the instructions of a pgbench -S transaction.
//! Only on a current-thread runtime (`workers = 1`): there a release cannot slip between a
//! client's look here and its place in the hand-off queue (`handoff.rs`), so a stashed
//! connection never idles beside a waiting client. deadpool still owns every connection (a stashed one counts as in use to it),
//! so `max_size` holds; `Pools` adds the stash back to the idle count and empties it into
//! deadpool before each maintenance pass, so idle_timeout and min_idle see every connection.

use std::sync::Mutex;
use std::time::Instant;

use deadpool::managed::Object;

use super::handoff::Queue;
use super::manager::{Readiness, ServerManager};
use super::ServerPool;

type Conn = Object<ServerManager>;

/// Idle connections released to a pool, the most recent last, and the clients waiting for one.
/// While a client waits the stash is empty: a release goes to the waiter.
pub struct Stash {
    enabled: bool,
    idle: Mutex<Vec<Conn>>,
    pub queue: Queue,
}

impl Stash {
    /// On only where one thread serves every client: the current-thread runtime, read from the
    /// runtime itself rather than from `workers`, which a reload may change.
    pub fn for_this_runtime() -> Self {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let flavor = Handle::try_current().map(|h| h.runtime_flavor());
        Self {
            enabled: flavor.is_ok_and(|f| f == RuntimeFlavor::CurrentThread),
            idle: Mutex::default(),
            queue: Queue::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.idle().len()
    }

    /// Takes every stashed connection out (they go back to deadpool when dropped).
    pub fn drain(&self) -> Vec<Conn> {
        std::mem::take(&mut *self.idle())
    }
}

/// The most recently released connection that passes the checks deadpool's recycle makes, if
/// one is stashed. One needing a ping goes back to deadpool, whose recycle pings it; a broken
/// or expired one is closed. `now`: a clock reading the caller took a moment ago, if any.
pub fn take(pool: &ServerPool, mut now: Option<Instant>) -> Option<Conn> {
    let m = pool.manager();
    if !m.stash.enabled {
        return None;
    }
    loop {
        let mut conn = m.stash.idle().pop()?;
        let at = *now.get_or_insert_with(Instant::now);
        match m.readiness(&mut conn, at) {
            Readiness::Ready => {
                conn.last_used = at;
                return Some(conn);
            }
            Readiness::Ping => drop(conn),
            Readiness::Discard(_) => drop(Object::take(conn)),
        }
    }
}

/// Gives a connection back (see `PooledConn`'s drop): to the client waiting longest, else into
/// the stash; to deadpool when the stash is off or the pool closed.
pub fn release(conn: Conn) {
    let Some(pool) = Object::pool(&conn) else {
        return;
    };
    let m = pool.manager();
    if m.stash.enabled && !pool.is_closed() {
        if let Err(conn) = m.stash.queue.hand(conn) {
            m.stash.idle().push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::pool::testing::{pools, spec};
    use crate::pool::PoolKey;
    use crate::route::Target;

    fn stash_enabled() -> bool {
        let key = PoolKey {
            target: Target::Main,
            spec: spec(),
        };
        pools().pool(&key).manager().stash.enabled
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_serving_thread_stashes() {
        assert!(stash_enabled());
    }

    /// With several threads a release could land in the stash just after a client found it
    /// empty and went to wait on deadpool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_serving_threads_do_not() {
        assert!(!stash_enabled());
    }
}
