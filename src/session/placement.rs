//! Pipeline steps route → topology → pool for one request: turn the routed target into a
//! server with `topology::pick` (replica rotation, lag, read-your-writes, the Patroni fence) and
//! check out a connection. Writes wait, bounded, for a writable primary during a switchover;
//! a replica that refuses connections is skipped once in favour of another server.

use std::time::{Duration, Instant};

use super::client::Client;
use super::live::Live;
use crate::config::PoolMode;
use crate::pool::{checkout, CheckoutError, PooledConn};
use crate::route::Target;
use crate::shared::Shared;
use crate::topology::select::read_cluster;
use crate::topology::{pick, Need, Pick, Via};

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
    let tm = &shared.metrics.topology;
    let deadline = started + snap.health.primary_wait;
    let ci_host = snap.phase.ci_write_host();
    // Subscribed only once a write has to wait: most checkouts never do.
    let mut changes = None;
    let mut skip: Option<String> = None;
    let mut waited = false;
    loop {
        let view = live.view.load();
        let need = if !target.is_replica()
            || c.session.pool_mode() == PoolMode::Session
            || c.ryw.is_idle()
        {
            Need::Any
        } else {
            c.ryw.need(view, read_cluster(target), Instant::now())
        };
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
                        if waited {
                            tm.primary_wait.observe(started.elapsed().as_secs_f64());
                        }
                        tm.placed(target, via).inc();
                        if via == Via::NoReplica {
                            shared.metrics.target(target).replica_fallback.inc();
                        }
                        return Ok(conn);
                    }
                    Err(CheckoutError::Server(e)) if e.is_transient() => {
                        shared
                            .metrics
                            .server_connect_errors
                            .with_label_values(&[target.label()])
                            .inc();
                        if target.is_replica() && skip.is_none() {
                            // Try another server right away; the checker takes it out soon.
                            let addr = &pool.manager().spec.addr;
                            tracing::warn!(server = %addr, error = %e, "replica unreachable; trying another server");
                            skip = Some(addr.clone());
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
        // Only a write target waits: a switchover leaves no primary for a second or two.
        let now = Instant::now();
        if target.is_replica() || now >= deadline {
            if !target.is_replica() {
                tm.primary_unavailable
                    .with_label_values(&[target.label()])
                    .inc();
            }
            return Err(err);
        }
        waited = true;
        let wait = RECHECK.min(deadline - now);
        let rx = changes.get_or_insert_with(|| shared.topology.subscribe());
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
}
