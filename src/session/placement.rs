//! Pipeline steps route → topology → pool for one request: turn the routed target into a
//! server with `topology::pick` (replica rotation, lag, read-your-writes, the Patroni fence) and
//! check out a connection. Writes wait, bounded, for a writable primary during a switchover;
//! a replica that refuses connections is skipped once in favour of another server.

use std::time::{Duration, Instant};

use super::client::Client;
use super::live::Live;
use super::machine::Session;
use crate::config::PoolMode;
use crate::pool::{checkout, CheckoutError, PooledConn};
use crate::route::Target;
use crate::server::ServerError;
use crate::shared::Shared;
use crate::topology::select::read_cluster;
use crate::topology::{pick, Need, Pick, ReadYourWrites, Via, View};

/// How long one wait for a topology change lasts before the view is looked at again.
const RECHECK: Duration = Duration::from_millis(100);

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("{0}")]
    Checkout(#[from] CheckoutError),
    #[error("pgdecomp: {why}; waited {waited:.1} s (health.primary_wait). The statement was not run; retry it")]
    NoWriter { why: String, waited: f64 },
    #[error("pgdecomp: WAL archiving lags on {server} ({ready} segments waiting, above throttle.archive_ready_threshold); this client's transaction waited {waited:.1} s (throttle.max_hold). The statement was not run; retry it later")]
    Throttled {
        server: String,
        ready: u64,
        waited: f64,
    },
}

/// A server connection for `target`; `started` is when the request began waiting for one.
pub async fn place(
    c: &mut Client,
    target: Target,
    shared: &Shared,
    live: &mut Live<'_>,
    started: Instant,
) -> Result<PooledConn, PlaceError> {
    let snap = &c.session.snap;
    let deadline = started + snap.health.primary_wait;
    let ci_host = snap.phase.ci_write_host();
    // Subscribed only once a write has to wait: most checkouts never do.
    let mut changes = None;
    let mut skip: Option<String> = None;
    let mut waited = false;
    loop {
        let view = live.view.load();
        let need = need(&c.session, &mut c.ryw, view, target);
        // Each client rotates over the replicas on its own count (started at its id), so no
        // counter is shared by every transaction.
        c.reads = c.reads.wrapping_add(1);
        let picked = pick(view, target, ci_host, need, c.reads, skip.as_deref());
        let err = match picked {
            Pick::Server { addr, via } => {
                let map = live.pools.load();
                let pool = c.pools.get(map, target, addr, &c.spec, &snap.server_tls);
                // Only the first pass reads the clock at `started`; a retry comes later.
                let fresh = !waited && skip.is_none();
                match checkout(pool, target, &mut c.queue_slot, started, fresh).await {
                    Ok(conn) => {
                        count_placed(shared, target, via, waited.then_some(started));
                        return Ok(conn);
                    }
                    Err(CheckoutError::Server(e)) if e.is_transient() => {
                        let addr = &pool.manager().spec.addr;
                        if skip_replica(shared, target, addr, &e, &mut skip) {
                            continue;
                        }
                        PlaceError::Checkout(CheckoutError::Server(e))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Pick::NoWriter(why) => PlaceError::NoWriter {
                why,
                waited: started.elapsed().as_secs_f64(),
            },
        };
        let Some(wait) = next_wait(shared, target, deadline) else {
            return Err(err);
        };
        waited = true;
        let rx = changes.get_or_insert_with(|| shared.topology.subscribe());
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
}

/// What `target`'s server must have replayed: a read that follows this client's write needs a
/// replica that has caught up (read-your-writes); anything else takes any server.
fn need(session: &Session, ryw: &mut ReadYourWrites, view: &View, target: Target) -> Need {
    if !target.is_replica() || session.pool_mode() == PoolMode::Session || ryw.is_idle() {
        return Need::Any;
    }
    ryw.need(view, read_cluster(target), Instant::now())
}

/// How long to wait for a topology change before the next try; `None` (counted for a write)
/// when the request gives up. Only a write target waits: a switchover leaves no primary for a
/// second or two.
fn next_wait(shared: &Shared, target: Target, deadline: Instant) -> Option<Duration> {
    if target.is_replica() {
        return None;
    }
    let now = Instant::now();
    if now >= deadline {
        let tm = &shared.metrics.topology;
        tm.primary_unavailable
            .with_label_values(&[target.label()])
            .inc();
        return None;
    }
    Some(RECHECK.min(deadline - now))
}

/// Counts a placement; `waited_since` when a write waited for a writable primary.
fn count_placed(shared: &Shared, target: Target, via: Via, waited_since: Option<Instant>) {
    let tm = &shared.metrics.topology;
    if let Some(since) = waited_since {
        tm.primary_wait.observe(since.elapsed().as_secs_f64());
    }
    tm.placed(target, via).inc();
    if via == Via::NoReplica {
        shared.metrics.target(target).replica_fallback.inc();
    }
}

/// Counts a server that could not be reached; true when the read should try another server
/// right away (the first replica to fail, which the checker takes out soon).
fn skip_replica(
    shared: &Shared,
    target: Target,
    addr: &str,
    e: &ServerError,
    skip: &mut Option<String>,
) -> bool {
    shared
        .metrics
        .server_connect_errors
        .with_label_values(&[target.label()])
        .inc();
    if !target.is_replica() || skip.is_some() {
        return false;
    }
    tracing::warn!(server = %addr, error = %e, "replica unreachable; trying another server");
    *skip = Some(addr.to_string());
    true
}
