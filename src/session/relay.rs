//! The per-client loop: wait for a request, classify and route it, check out a connection to
//! the chosen target, hand over to the pump until the transaction (or session) ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::cancel::CancelSlot;
use super::io::ClientIo;
use super::params::ClientParams;
use super::prepared::Statement;
use super::pump::{pump, PumpEnd};
use super::routing::Routing;
use super::{SessionError, Shared};
use crate::config::{Database, PoolMode, Snapshot};
use crate::pool::{checkout, CheckoutError, PoolKey};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::Frame;
use crate::route::{Reason, Target};
use crate::server::ServerSpec;

/// Buffered bytes in either direction beyond which the proxy stops reading the other side, so
/// a slow reader pushes back on a fast writer instead of growing memory.
pub const HIGH_WATER: usize = 256 * 1024;

/// A logged-in client.
pub struct Client {
    pub io: ClientIo,
    pub id: u64,
    pub peer: SocketAddr,
    pub user: String,
    pub database: String,
    pub params: ClientParams,
    /// The client's named statements.
    pub stmts: HashMap<Box<[u8]>, Arc<Statement>>,
    /// Server login for this client; the address is filled in per target.
    pub spec: ServerSpec,
    pub cancel_key: (u32, u32),
    pub cancel_slot: CancelSlot,
    pub pool_mode: PoolMode,
    pub routing: Routing,
    /// After an error answered by the proxy, extended messages are skipped until Sync.
    pub skip_until_sync: bool,
    /// The client → server buffer, kept between transactions to avoid an allocation each.
    pub to_server: bytes::BytesMut,
}

/// What the handshake established about a client.
pub struct Login {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub db: Database,
    pub params: ClientParams,
    pub spec: ServerSpec,
    pub cancel_key: (u32, u32),
    pub cancel_slot: CancelSlot,
    pub snap: Arc<Snapshot>,
}

impl Client {
    pub fn new(io: ClientIo, peer: SocketAddr, l: Login) -> Self {
        Self {
            io,
            id: l.id,
            peer,
            user: l.user,
            database: l.database,
            params: l.params,
            stmts: HashMap::new(),
            spec: l.spec,
            cancel_key: l.cancel_key,
            cancel_slot: l.cancel_slot,
            pool_mode: l.snap.pool_mode,
            routing: Routing::new(&l.db, l.snap),
            skip_until_sync: false,
            to_server: bytes::BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Transaction status the client believes in, for replies the proxy makes itself.
    fn status(&self) -> u8 {
        if self.routing.held_begin.is_some() {
            b'T'
        } else {
            b'I'
        }
    }
}

/// Serves requests until the client leaves.
pub async fn run(
    c: &mut Client,
    shared: &Shared,
    entry: &super::control::ClientEntry,
) -> Result<(), SessionError> {
    loop {
        c.io.flush().await?;
        let Some(first) = c.io.read_frame().await? else {
            return Ok(());
        };
        match first.tag {
            b'X' => return Ok(()),
            b'H' => continue,
            b'S' => {
                // Nothing outstanding: answer the Sync ourselves rather than take a server.
                c.skip_until_sync = false;
                backend::ready_for_query(c.status(), &mut c.io.wbuf);
                continue;
            }
            _ if c.skip_until_sync => continue,
            _ => {}
        }
        c.routing.refresh(shared);
        let unit = collect_unit(c, first).await?;
        let carried = c.routing.unit(&unit, &c.stmts, shared);
        let mut d = c.routing.decide(&carried, shared, c.id);
        let rejection = d.rejected().map(|v| v.pg_error(&carried.sql));
        if rejection.is_none() && d.reason == Reason::BeginDeferred {
            if unit.len() == 1 && unit[0].tag == b'Q' && carried.class.statements.len() == 1 {
                // Hold BEGIN until the transaction's first statement picks its server.
                c.routing.held_begin = Some(unit[0].raw.clone());
                c.routing.after(&carried, &d);
                backend::command_complete("BEGIN", &mut c.io.wbuf);
                backend::ready_for_query(b'T', &mut c.io.wbuf);
                continue;
            }
            // An extended-protocol BEGIN, or BEGIN with more statements in one string, is sent
            // at once and pins the hinted target.
            d.reason = Reason::Write;
        }
        let target = match c.pool_mode {
            PoolMode::Session => c.routing.session_target(&d),
            PoolMode::Transaction => d.target,
        };
        if rejection.is_none() {
            c.routing.after(&carried, &d);
        }
        entry.set(1, Some(target));
        shared.control.wait_unpaused(target).await;
        let spec = spec_for(&c.spec, &c.routing.snap, target, shared);
        let pool = shared.pools.load().pool(&PoolKey { target, spec });
        let waited = Instant::now();
        let conn = match checkout(&pool, target).await {
            Ok(conn) => conn,
            Err(e) => {
                if !matches!(e, CheckoutError::WaitTimeout { .. }) {
                    shared
                        .metrics
                        .server_connect_errors
                        .with_label_values(&[target.label()])
                        .inc();
                }
                reject(c, &unit, &e);
                entry.set(0, Some(target));
                continue;
            }
        };
        entry.set(2, Some(target));
        let running = shared.control.begin(target);
        let m = &shared.metrics;
        m.checkout_wait.observe(waited.elapsed().as_secs_f64());
        let tm = m.target(target);
        tm.transactions.inc();
        let held = Instant::now();
        let end = pump(c, conn, unit, rejection, shared, &tm.statement_seconds).await;
        drop(running);
        entry.set(0, Some(target));
        let end = end?;
        tm.transaction_seconds.observe(held.elapsed().as_secs_f64());
        if end == PumpEnd::ClientGone {
            return Ok(());
        }
    }
}

/// Reads the rest of an extended-protocol batch (up to Sync or Flush), which is routed as one.
async fn collect_unit(c: &mut Client, first: Frame) -> Result<Vec<Frame>, SessionError> {
    let single = matches!(first.tag, b'Q' | b'F' | b'd' | b'c' | b'f');
    let mut bytes = first.raw.len();
    let mut unit = vec![first];
    while !single && !matches!(unit.last().map(|f| f.tag), Some(b'S' | b'H')) && bytes < HIGH_WATER
    {
        // After an Execute the client may wait for a reply (COPY FROM STDIN): take only what is
        // already buffered rather than wait for a Sync that comes later.
        let next = if unit.last().is_some_and(|f| f.tag == b'E') {
            c.io.buffered_frame()?
        } else {
            c.io.read_frame().await?
        };
        match next {
            Some(f) => {
                bytes += f.raw.len();
                unit.push(f);
            }
            None => break,
        }
    }
    Ok(unit)
}

/// The server address for `target`, with the client's login. A group without replicas reads
/// from its primary (counted).
fn spec_for(base: &ServerSpec, snap: &Snapshot, target: Target, shared: &Shared) -> ServerSpec {
    let pick = |replicas: &[String], primary: &str| -> String {
        if replicas.is_empty() {
            shared
                .metrics
                .replica_fallback
                .with_label_values(&[target.label()])
                .inc();
            return primary.to_string();
        }
        let i = shared.replica_rr.fetch_add(1, Ordering::Relaxed) % replicas.len();
        replicas[i].clone()
    };
    let addr = match target {
        Target::Main => snap.main.primary.clone(),
        Target::Ci => match snap.phase.ci_write_host() {
            crate::route::CiWriteHost::MainPrimary => snap.main.primary.clone(),
            crate::route::CiWriteHost::CiPrimary => snap.ci.primary.clone(),
        },
        Target::MainReplica => pick(&snap.main.replicas, &snap.main.primary),
        Target::CiReplica => pick(&snap.ci.replicas, &snap.ci.primary),
    };
    ServerSpec {
        addr,
        ..base.clone()
    }
}

/// Answers a request that could not get a server; the session stays usable.
fn reject(c: &mut Client, unit: &[Frame], e: &CheckoutError) {
    tracing::warn!(client = c.id, peer = %c.peer, user = %c.user, database = %c.database, error = %e, "no server connection for client");
    let code = match e {
        CheckoutError::WaitTimeout { .. } => "53300",
        _ => "08006",
    };
    PgError::error(code, e.to_string()).encode(&mut c.io.wbuf);
    let synced = matches!(unit.last().map(|f| f.tag), Some(b'Q' | b'F' | b'S'));
    if synced {
        let status = if c.status() == b'T' { b'E' } else { b'I' };
        backend::ready_for_query(status, &mut c.io.wbuf);
    } else {
        c.skip_until_sync = true;
    }
}
