//! The per-client loop: wait for a request, classify and route it, check out a connection to
//! the chosen target, hand over to the pump until the transaction (or session) ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::cancel::CancelSlot;
use super::io::ClientIo;
use super::params::ClientParams;
use super::placement::{place, PlaceError};
use super::prepared::Statement;
use super::pump::{pump, PumpEnd};
use super::routing::Routing;
use super::{SessionError, Shared};
use crate::config::{Database, PoolMode, Snapshot};
use crate::pool::CheckoutError;
use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::Frame;
use crate::route::Reason;
use crate::server::ServerSpec;
use crate::topology::select::write_cluster;
use crate::topology::ReadYourWrites;

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
    /// Positions the client's reads must see (its own writes, or `pgdecomp.min_lsn`).
    pub ryw: ReadYourWrites,
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
            routing: Routing::new(&l.db, l.snap.clone()),
            skip_until_sync: false,
            to_server: bytes::BytesMut::with_capacity(8 * 1024),
            ryw: ReadYourWrites::new(
                l.snap.health.read_your_writes,
                l.snap.health.read_your_writes_timeout,
            ),
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
        if first.tag == b'Q' && super::local::answer(c, &first, shared).await {
            continue;
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
        let waited = Instant::now();
        let conn = match place(c, target, shared, waited).await {
            Ok(conn) => conn,
            Err(e) => {
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
        if c.routing.take_wrote() && !target.is_replica() {
            // Committed (or ended) now: reads need a replica that has replayed it.
            let cluster = write_cluster(target, c.routing.snap.phase.ci_write_host());
            c.ryw.wrote(cluster, Instant::now());
        }
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

/// Answers a request that could not get a server; the session stays usable.
fn reject(c: &mut Client, unit: &[Frame], e: &PlaceError) {
    tracing::warn!(client = c.id, peer = %c.peer, user = %c.user, database = %c.database, error = %e, "no server connection for client");
    let code = match e {
        PlaceError::Checkout(CheckoutError::WaitTimeout { .. }) => "53300",
        // PostgreSQL's own code for a server that is starting or stopping: clients retry it.
        PlaceError::NoWriter { .. } => "57P03",
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
