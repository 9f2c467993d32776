//! The per-client loop: wait for a request, pick its server (the routing hook), check out a
//! connection, relay both directions until the transaction (or session) ends, release.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use deadpool::managed::Object;
use tokio::io::{AsyncReadExt, AsyncWriteExt as _};

use super::cancel::{CancelSlot, ServerKey};
use super::io::ClientIo;
use super::params::ClientParams;
use super::prepared::{forward_frame, Statement};
use super::scan::{SegmentOwner, Tracker};
use super::{SessionError, Shared};
use crate::config::{Database, PoolMode, Snapshot};
use crate::pool::{checkout, CheckoutError, PoolKey, PooledConn};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::Frame;
use crate::protocol::frontend::write_query;
use crate::route::Target;
use crate::server::{ServerConn, ServerSpec};

/// Buffered bytes in either direction beyond which the proxy stops reading the other side, so
/// a slow reader pushes back on a fast writer instead of growing memory.
const HIGH_WATER: usize = 256 * 1024;

/// A logged-in client.
pub struct Client {
    pub io: ClientIo,
    pub id: u64,
    pub peer: SocketAddr,
    pub user: String,
    pub database: String,
    pub db: Database,
    pub params: ClientParams,
    /// The client's named statements.
    pub stmts: HashMap<Box<[u8]>, Arc<Statement>>,
    /// Server login for this client, with the address filled in per target.
    pub spec: ServerSpec,
    pub cancel_key: (u32, u32),
    cancel_slot: CancelSlot,
    pool_mode: PoolMode,
    /// After an error answered on the proxy's side, extended messages are skipped until Sync.
    skip_until_sync: bool,
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
    pub pool_mode: PoolMode,
}

impl Client {
    pub fn new(io: ClientIo, peer: SocketAddr, l: Login) -> Self {
        Self {
            io,
            id: l.id,
            peer,
            user: l.user,
            database: l.database,
            db: l.db,
            params: l.params,
            stmts: HashMap::new(),
            spec: l.spec,
            cancel_key: l.cancel_key,
            cancel_slot: l.cancel_slot,
            pool_mode: l.pool_mode,
            skip_until_sync: false,
        }
    }
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
enum PumpEnd {
    /// The transaction ended; the server went back to the pool.
    Released,
    /// The client left (Terminate or EOF).
    ClientGone,
}

/// Serves requests until the client leaves.
pub async fn run(c: &mut Client, shared: &Shared) -> Result<(), SessionError> {
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
                backend::ready_for_query(b'I', &mut c.io.wbuf);
                continue;
            }
            _ if c.skip_until_sync => continue,
            _ => {}
        }
        let snap = shared.config.load_full();
        let target = route_hook(&c.db, &first);
        let key = PoolKey {
            target,
            spec: spec_for(&c.spec, &snap, target),
        };
        let pool = shared.pools.pool(&key);
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
                reject(c, &first, &e);
                continue;
            }
        };
        let m = &shared.metrics;
        m.checkout_wait.observe(waited.elapsed().as_secs_f64());
        m.transactions.with_label_values(&[target.label()]).inc();
        let held = Instant::now();
        let end = pump(c, conn, first, shared).await?;
        m.transaction_seconds
            .with_label_values(&[target.label()])
            .observe(held.elapsed().as_secs_f64());
        if end == PumpEnd::ClientGone {
            return Ok(());
        }
    }
}

/// Routing hook: the single place that picks the server for a transaction or statement.
/// The proxy core sends everything to the main primary; phase routing replaces this.
fn route_hook(_db: &Database, _first: &Frame) -> Target {
    Target::Main
}

/// The server address for `target` in `snap`, with the client's login.
fn spec_for(base: &ServerSpec, snap: &Snapshot, target: Target) -> ServerSpec {
    let addr = match target {
        Target::Main | Target::Ci => snap.main.primary.clone(),
        Target::MainReplica => snap
            .main
            .replicas
            .first()
            .unwrap_or(&snap.main.primary)
            .clone(),
        Target::CiReplica => snap.ci.replicas.first().unwrap_or(&snap.ci.primary).clone(),
    };
    ServerSpec {
        addr,
        ..base.clone()
    }
}

/// Answers a request that could not get a server; the session stays usable.
fn reject(c: &mut Client, first: &Frame, e: &CheckoutError) {
    tracing::warn!(client = c.id, peer = %c.peer, user = %c.user, database = %c.database, error = %e, "no server connection for client");
    let code = match e {
        CheckoutError::WaitTimeout { .. } => "53300",
        _ => "08006",
    };
    PgError::error(code, e.to_string()).encode(&mut c.io.wbuf);
    if matches!(first.tag, b'Q' | b'F') {
        backend::ready_for_query(b'I', &mut c.io.wbuf);
    } else {
        c.skip_until_sync = true;
    }
}

/// Whether the next buffered client message may be sent to the attached server now. In
/// transaction mode a new request waits until the previous one's ReadyForQuery tells whether
/// the transaction ended (then it is routed afresh); COPY data always flows.
fn may_forward_next(c: &Client, t: &Tracker) -> bool {
    if matches!(c.io.rbuf.first(), Some(b'd' | b'c' | b'f')) {
        return true;
    }
    c.pool_mode == PoolMode::Session || t.status != b'I' || t.client_open() || !t.awaiting_ready()
}

async fn pump(
    c: &mut Client,
    mut conn: PooledConn,
    first: Frame,
    shared: &Shared,
) -> Result<PumpEnd, SessionError> {
    let sc: &mut ServerConn = &mut conn;
    set_cancel(&c.cancel_slot, Some(sc));
    let mut t = Tracker::default();
    let mut to_server = BytesMut::with_capacity(8 * 1024);
    let defaults = sc.defaults.clone();
    if let Some(sql) = c.params.sync_sql(&sc.params, &defaults) {
        write_query(&sql, &mut to_server);
        t.close(SegmentOwner::Proxy);
        c.params.apply_to(&mut sc.params, &defaults);
    }
    forward_frame(
        &first,
        &mut c.stmts,
        &shared.statements,
        &mut sc.prepared,
        &mut t,
        &mut to_server,
    );
    let mut terminate = false;
    let mut client_eof = false;
    let outcome = loop {
        while !terminate && to_server.len() < HIGH_WATER && may_forward_next(c, &t) {
            let frame = match c.io.buffered_frame() {
                Ok(f) => f,
                Err(e) => {
                    set_cancel(&c.cancel_slot, None);
                    conn.broken = true;
                    discard_if_broken(conn);
                    return Err(e);
                }
            };
            match frame {
                Some(f) if f.tag == b'X' => terminate = true,
                Some(f) => forward_frame(
                    &f,
                    &mut c.stmts,
                    &shared.statements,
                    &mut sc.prepared,
                    &mut t,
                    &mut to_server,
                ),
                None => break,
            }
        }
        let idle = t.is_idle() && to_server.is_empty() && sc.rbuf.is_empty();
        if idle
            && t.status == b'I'
            && (terminate || client_eof || c.pool_mode == PoolMode::Transaction)
        {
            break if terminate || client_eof {
                Outcome::Gone { clean: true }
            } else {
                Outcome::Released
            };
        }
        if terminate || client_eof {
            // Left inside a transaction or mid-request: the server state is unknown.
            break Outcome::Gone { clean: false };
        }
        let (mut crd, mut cwr) = c.io.stream.split();
        let (mut srd, mut swr) = sc.stream.split();
        tokio::select! {
            r = crd.read_buf(&mut c.io.rbuf), if !client_eof && !terminate && to_server.len() < HIGH_WATER => {
                match r {
                    Ok(0) | Err(_) => client_eof = true,
                    Ok(_) => {}
                }
            }
            r = srd.read_buf(&mut sc.rbuf), if c.io.wbuf.len() < HIGH_WATER => {
                match r {
                    Ok(n) if n > 0 => {
                        let ev = t.scan(&mut sc.rbuf, &mut c.io.wbuf, &mut sc.prepared, &mut sc.params);
                        match ev {
                            Ok(ev) => {
                                for (k, v) in &ev.client_params {
                                    c.params.set(k, v);
                                }
                                if let Some((code, msg)) = ev.proxy_error {
                                    tracing::warn!(client = c.id, %code, %msg, "parameter sync failed");
                                }
                            }
                            Err(e) => break Outcome::ServerLost(e.to_string()),
                        }
                    }
                    Ok(_) => break Outcome::ServerLost("server closed the connection unexpectedly".into()),
                    Err(e) => break Outcome::ServerLost(e.to_string()),
                }
            }
            r = cwr.write_buf(&mut c.io.wbuf), if !c.io.wbuf.is_empty() => {
                if r.is_err() {
                    client_eof = true;
                    c.io.wbuf.clear();
                }
            }
            r = swr.write_buf(&mut to_server), if !to_server.is_empty() => {
                if let Err(e) = r {
                    break Outcome::ServerLost(e.to_string());
                }
            }
        }
    };
    set_cancel(&c.cancel_slot, None);
    finish(c, conn, outcome, &t).await
}

enum Outcome {
    Released,
    Gone { clean: bool },
    ServerLost(String),
}

async fn finish(
    c: &mut Client,
    mut conn: PooledConn,
    outcome: Outcome,
    t: &Tracker,
) -> Result<PumpEnd, SessionError> {
    match outcome {
        Outcome::Released => {
            conn.last_used = Instant::now();
            drop(conn);
            Ok(PumpEnd::Released)
        }
        Outcome::Gone { clean } => {
            if clean && c.pool_mode == PoolMode::Session {
                // Session mode hands the next client a clean session, as PgBouncer does.
                if conn.simple_query("DISCARD ALL").await.is_ok() {
                    conn.prepared.clear();
                    let defaults = conn.defaults.clone();
                    conn.params = (*defaults).clone();
                } else {
                    conn.broken = true;
                }
            } else if !clean {
                conn.broken = true;
            }
            conn.last_used = Instant::now();
            discard_if_broken(conn);
            Ok(PumpEnd::ClientGone)
        }
        Outcome::ServerLost(reason) => {
            tracing::warn!(client = c.id, server = %conn.addr, %reason, "server connection lost");
            conn.broken = true;
            discard_if_broken(conn);
            // Keep the client usable: report the loss, then answer every request still waiting.
            PgError::error(
                "08006",
                format!("server connection lost ({reason}); the transaction was aborted"),
            )
            .encode(&mut c.io.wbuf);
            for _ in 0..t.client_waiting() {
                backend::ready_for_query(b'I', &mut c.io.wbuf);
            }
            c.skip_until_sync = t.client_open();
            Ok(PumpEnd::Released)
        }
    }
}

fn discard_if_broken(conn: PooledConn) {
    if conn.broken {
        // Taking it out of the pool closes the socket instead of recycling it.
        drop(Object::take(conn));
    }
}

fn set_cancel(slot: &CancelSlot, server: Option<&ServerConn>) {
    let key = server.map(|s| ServerKey {
        addr: s.addr.clone(),
        pid: s.backend_pid,
        secret: s.backend_secret,
    });
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = key;
}
