//! Pipeline step 4 (client → framing → classify → route → **pool** → server): deadpool pools of
//! server connections, one per (target, server address, database, user).

mod cache;
mod handoff;
mod lease;
mod manager;
mod stash;

use foldhash::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{Object, Pool, PoolError, QueueMode, Status, TimeoutType, Timeouts};
use deadpool::Runtime;

pub use cache::PoolCache;
pub use handoff::Slot;
pub use lease::PooledConn;
pub use manager::{ConnLimits, ServerManager};

use crate::route::Target;
use crate::server::{ServerError, ServerSpec};

pub type ServerPool = Pool<ServerManager>;
/// ParameterStatus `(name, value)` pairs a server sent at login.
pub type Welcome = Arc<Vec<(String, String)>>;

/// Identifies one pool. The target is part of the key because phases 4–6 keep a separate `ci`
/// pool to the main primary host, counted under its own db_config_name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub target: Target,
    pub spec: ServerSpec,
}

/// Pool sizing and timeouts from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    pub pool_size: usize,
    pub min_idle: usize,
    pub query_wait_timeout: Duration,
    pub idle_timeout: Duration,
    pub limits: ConnLimits,
}

/// Why a client could not get a server connection.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("query_wait_timeout: no server connection to {target} became free within {secs:.1} s")]
    WaitTimeout { target: Target, secs: f64 },
    #[error("{0}")]
    Server(#[from] ServerError),
    #[error("pool for {0} is closed")]
    Closed(Target),
}

/// All pools, created on first use.
pub struct Pools {
    settings: PoolSettings,
    pools: Mutex<HashMap<PoolKey, ServerPool>>,
    /// ParameterStatus lists servers sent at login, replayed to clients as their welcome.
    welcome: Mutex<HashMap<ServerSpec, Welcome>>,
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            pools: Mutex::default(),
            welcome: Mutex::default(),
        })
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// The pool for `key`, created when missing.
    pub fn pool(&self, key: &PoolKey) -> ServerPool {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pools.get(key) {
            return p.clone();
        }
        let manager = ServerManager {
            spec: key.spec.clone(),
            limits: self.settings.limits.clone(),
            require_primary: !key.target.is_replica(),
            stash: stash::Stash::for_this_runtime(),
        };
        let pool = Pool::builder(manager)
            .max_size(self.settings.pool_size.max(1))
            .wait_timeout(Some(self.settings.query_wait_timeout))
            .create_timeout(Some(self.settings.limits.connect_timeout))
            // The recycle check bounds its own ping; a pool-level timer would be set up on
            // every checkout for nothing.
            .recycle_timeout(None)
            // The most recently used connection first, as PgBouncer does (server_round_robin
            // off): its backend is warm, and the ones left idle can reach idle_timeout.
            .queue_mode(QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .build()
            .expect("a runtime is set, so building cannot fail");
        pools.insert(key.clone(), pool.clone());
        pool
    }

    pub fn welcome(&self, spec: &ServerSpec) -> Option<Welcome> {
        self.welcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(spec)
            .cloned()
    }

    pub fn set_welcome(&self, spec: &ServerSpec, w: Welcome) {
        self.welcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.clone(), w);
    }

    /// A pool's counts as deadpool keeps them, with its stashed connections counted idle and
    /// the clients in its hand-off queue counted waiting.
    pub fn status(pool: &ServerPool) -> Status {
        let mut st = pool.status();
        let stash = &pool.manager().stash;
        st.available = (st.available + stash.len()).min(st.size);
        st.waiting += stash.queue.len();
        st
    }

    /// Every pool with its key, for stats and maintenance.
    pub fn all(&self) -> Vec<(PoolKey, ServerPool)> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.iter().map(|(k, p)| (k.clone(), p.clone())).collect()
    }

    /// Closes and forgets the pools `keep` rejects: new checkouts fail over to fresh pools,
    /// connections in use are closed when their clients release them.
    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|key, pool| {
            let kept = keep(key);
            if !kept {
                tracing::info!(server = %key.spec.addr, target = %key.target, "draining a removed server's pool");
                pool.close();
                drop(pool.manager().stash.drain());
                // Its waiters ask deadpool again and learn it is closed.
                pool.manager().stash.queue.retry_all();
            }
            kept
        });
    }

    /// Ends the waits for a connection that passed query_wait_timeout (see `handoff.rs`).
    pub fn expire_waiters(&self, now: Instant) {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        for pool in pools.values() {
            pool.manager().stash.queue.expire(now);
        }
    }

    /// Closes idle connections past idle_timeout and opens connections up to min_idle.
    pub async fn maintain(&self) {
        let idle_timeout = self.settings.idle_timeout;
        for (_, pool) in self.all() {
            // Back to deadpool first, so the idle checks below see them too.
            drop(pool.manager().stash.drain());
            pool.retain(|conn, _| !conn.broken && conn.last_used.elapsed() < idle_timeout);
            let status = pool.status();
            let missing = self.settings.min_idle.saturating_sub(status.available);
            let room = status.max_size.saturating_sub(status.size);
            let mut held = Vec::new();
            for _ in 0..missing.min(room) {
                let timeouts = Timeouts {
                    wait: Some(Duration::ZERO),
                    create: Some(self.settings.limits.connect_timeout),
                    recycle: Some(self.settings.limits.connect_timeout),
                };
                match pool.timeout_get(&timeouts).await {
                    Ok(c) => held.push(c),
                    Err(_) => break,
                }
            }
        }
    }
}

/// Takes a connection from `pool`, mapping deadpool's errors to what the client is told.
/// `slot` is the client's place for a wait in the pool's hand-off queue, made on its first wait;
/// `since` is when the client began to wait (the wait limit counts from it); `fresh` says it
/// was read a moment ago, so the checkout's checks may take it for the clock.
pub async fn checkout(
    pool: &ServerPool,
    target: Target,
    slot: &mut Option<Arc<Slot>>,
    since: Instant,
    fresh: bool,
) -> Result<PooledConn, CheckoutError> {
    // The usual case, before any wait's state is set up.
    if let Some(c) = stash::take(pool, fresh.then_some(since)) {
        return Ok(PooledConn::new(c));
    }
    let got = match pool.manager().stash.enabled() {
        true => queued(pool, target, slot, since).await,
        false => in_deadpool(pool, target).await,
    };
    got.map(PooledConn::new)
}

/// A checkout where the stash is on and empty: deadpool without waiting (an idle connection, or
/// room to open one), then a wait in the hand-off queue, bounded by the pool's
/// wait timeout (query_wait_timeout) over all its turns.
async fn queued(
    pool: &ServerPool,
    target: Target,
    slot: &mut Option<Arc<Slot>>,
    since: Instant,
) -> Result<Object<ServerManager>, CheckoutError> {
    let m = pool.manager();
    let configured = pool.timeouts();
    let now = Timeouts {
        wait: Some(Duration::ZERO),
        ..configured
    };
    let deadline = configured.wait.and_then(|limit| since.checked_add(limit));
    let mut front = false;
    loop {
        // With clients already waiting, deadpool has nothing free (releases go to them, and
        // room to open a connection to the first of them): a newcomer queues behind them.
        if front || m.stash.queue.is_empty() {
            match pool.timeout_get(&now).await {
                Ok(c) => return Ok(c),
                Err(PoolError::Timeout(TimeoutType::Wait)) => {}
                Err(e) => return Err(checkout_error(e, target, configured)),
            }
        }
        if configured.wait.is_some_and(|w| w.is_zero()) {
            // query_wait_timeout = 0: no wait at all, as before the queue.
            let e = PoolError::Timeout(TimeoutType::Wait);
            return Err(checkout_error(e, target, configured));
        }
        let slot = slot.get_or_insert_with(Arc::default);
        match m.stash.queue.wait(slot, front, deadline).await {
            handoff::Got::Conn(mut c) => {
                match m.readiness_released(&mut c) {
                    manager::Readiness::Ready => return Ok(c),
                    // Into deadpool, whose recycle (reached on the next turn) pings it.
                    manager::Readiness::Ping => drop(c),
                    manager::Readiness::Discard(_) => drop(Object::take(c)),
                }
            }
            handoff::Got::Retry => {}
            handoff::Got::Expired => {
                let e = PoolError::Timeout(TimeoutType::Wait);
                return Err(checkout_error(e, target, configured));
            }
        }
        // Whatever comes next, this client was first in line. A release may have stashed a
        // connection while it was out of the queue.
        front = true;
        if let Some(c) = stash::take(pool, None) {
            return Ok(c);
        }
    }
}

/// A checkout where the stash is off (several serving threads): deadpool's own wait.
async fn in_deadpool(
    pool: &ServerPool,
    target: Target,
) -> Result<Object<ServerManager>, CheckoutError> {
    // A first try that does not wait: with a permit free (the usual case) it skips the wait's
    // timer, which costs more than the rest of a checkout. Both tries are the same future at
    // the same await, so the state is no larger; a client queued for a permit is not
    // overtaken, as the semaphore hands a freed permit to the queue first.
    let configured = pool.timeouts();
    let mut timeouts = Timeouts {
        wait: Some(Duration::ZERO),
        ..configured
    };
    let mut first = true;
    loop {
        return match pool.timeout_get(&timeouts).await {
            Ok(c) => Ok(c),
            Err(PoolError::Timeout(TimeoutType::Wait)) if first => {
                first = false;
                timeouts = configured;
                continue;
            }
            Err(e) => Err(checkout_error(e, target, configured)),
        };
    }
}

fn checkout_error(
    e: PoolError<ServerError>,
    target: Target,
    configured: Timeouts,
) -> CheckoutError {
    match e {
        PoolError::Timeout(_) => CheckoutError::WaitTimeout {
            target,
            secs: configured.wait.unwrap_or_default().as_secs_f64(),
        },
        PoolError::Backend(e) => CheckoutError::Server(e),
        PoolError::Closed => CheckoutError::Closed(target),
        e => CheckoutError::Server(ServerError::Protocol {
            addr: target.to_string(),
            message: e.to_string(),
        }),
    }
}

/// Pools and a login for the pool module's unit tests (no server is reached).
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{ConnLimits, PoolSettings, Pools};
    use crate::server::tls::ServerTls;
    use crate::server::{ServerCredential, ServerSpec};

    pub fn pools() -> Arc<Pools> {
        let limits = ConnLimits {
            connect_timeout: Duration::from_secs(1),
            server_lifetime: Duration::from_secs(60),
            check_delay: Duration::from_secs(1),
        };
        Pools::new(PoolSettings {
            pool_size: 2,
            min_idle: 0,
            query_wait_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            limits,
        })
    }

    pub fn spec() -> ServerSpec {
        ServerSpec {
            addr: String::new(),
            dbname: "db".into(),
            user: "u".into(),
            credential: ServerCredential::None,
            tls: ServerTls::default(),
        }
    }
}
