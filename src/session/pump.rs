//! The relay loop while a client holds a server connection: client messages go through
//! classify → route (violations, rejections) → rename/prepare → server; server bytes come back
//! raw through the scanner. Ends when the transaction ends (transaction pooling) or the client
//! leaves.

use std::time::Instant;

use bytes::BytesMut;
use deadpool::managed::Object;
use tokio::io::{AsyncReadExt, AsyncWriteExt as _};

use super::cancel::CancelSlot;
use super::prepared::forward_frame;
use super::relay::{Client, HIGH_WATER};
use super::scan::{SegmentOwner, Tracker};
use super::{SessionError, Shared};
use crate::config::PoolMode;
use crate::pool::PooledConn;
use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::Frame;
use crate::protocol::frontend::{
    write_bind_unnamed, write_execute_unnamed, write_parse, write_query,
};
use crate::route::PgError as RouteError;
use crate::server::ServerConn;

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PumpEnd {
    /// The transaction ended; the server went back to the pool.
    Released,
    /// The client left (Terminate or EOF).
    ClientGone,
}

enum Outcome {
    Released,
    Gone { clean: bool },
    ServerLost(String),
}

/// Per-attachment state besides the scanner.
struct Relay {
    t: Tracker,
    to_server: BytesMut,
    /// After a rejected extended-protocol statement: drop client messages up to Sync.
    discarding: bool,
}

/// SQL that makes the server itself raise the error of an enforced violation, so the session's
/// transaction state (aborted inside a transaction) is exactly PostgreSQL's own.
fn raise_sql(e: &RouteError) -> String {
    let lit = |s: &str| {
        format!(
            "'{}'",
            s.replace('\'', "''").replace("$pgdecomp$", "$ pgdecomp$")
        )
    };
    let hint = e
        .hint
        .map(|h| format!(", HINT = {}", lit(h)))
        .unwrap_or_default();
    format!(
        "DO $pgdecomp$ BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {}{hint}; END $pgdecomp$",
        e.sqlstate,
        lit(&e.message)
    )
}

impl Relay {
    /// Replaces a rejected statement with one that fails on the server with its error.
    fn inject_rejection(&mut self, simple: bool, e: &RouteError) {
        let sql = raise_sql(e);
        if simple {
            write_query(&sql, &mut self.to_server);
            self.t.close(SegmentOwner::Client);
        } else {
            write_parse("", &sql, &[0, 0], &mut self.to_server);
            self.t.parse_sent(None, true);
            write_bind_unnamed(&mut self.to_server);
            self.t.injected_bind();
            write_execute_unnamed(&mut self.to_server);
            self.t.client_message();
            self.discarding = true;
        }
    }
}

/// Renames/prepares and writes one client message for the attached server.
fn forward(
    c: &mut Client,
    sc: &mut ServerConn,
    t: &mut Tracker,
    out: &mut BytesMut,
    f: &Frame,
    shared: &Shared,
) {
    forward_frame(
        f,
        &mut c.stmts,
        &shared.statements,
        &mut sc.prepared,
        t,
        out,
    );
}

/// Handles one client message while a server is attached: routing checks, then forwarding.
fn on_client_frame(c: &mut Client, sc: &mut ServerConn, r: &mut Relay, f: &Frame, shared: &Shared) {
    if r.discarding {
        if f.tag == b'S' {
            r.discarding = false;
            forward(c, sc, &mut r.t, &mut r.to_server, f, shared);
        }
        return;
    }
    let routed = matches!(f.tag, b'Q' | b'P') || (f.tag == b'B' && f.body().first() != Some(&0));
    if routed {
        if let Some(carried) = c.routing.carried(f, &c.stmts, shared) {
            let d = c.routing.decide(&carried, shared, c.id);
            if let Some(v) = d.rejected() {
                let e = v.pg_error(&carried.sql);
                r.inject_rejection(f.tag == b'Q', &e);
                return;
            }
            c.routing.after(&carried, &d);
        }
    }
    forward(c, sc, &mut r.t, &mut r.to_server, f, shared);
}

/// Whether the next buffered client message may be sent to the attached server now. In
/// transaction pooling a request outside a transaction is never sent to the attached server:
/// the server is released and the request routed afresh by its own tables (a pipelined write
/// after a read must not follow the read to a replica). COPY data always flows.
fn may_forward_next(c: &Client, t: &Tracker) -> bool {
    if matches!(c.io.rbuf.first(), Some(b'd' | b'c' | b'f')) {
        return true;
    }
    c.pool_mode == PoolMode::Session || t.status != b'I' || t.client_open()
}

pub async fn pump(
    c: &mut Client,
    mut conn: PooledConn,
    unit: Vec<Frame>,
    rejection: Option<RouteError>,
    shared: &Shared,
    statement_seconds: &prometheus::Histogram,
) -> Result<PumpEnd, SessionError> {
    let sc: &mut ServerConn = &mut conn;
    sc.in_use = true;
    set_cancel(&c.cancel_slot, Some(sc));
    let mut r = Relay {
        t: Tracker::default(),
        to_server: BytesMut::with_capacity(8 * 1024),
        discarding: false,
    };
    r.t.drop_idle_fatal = c.pool_mode == PoolMode::Transaction;
    if sc.params_fingerprint != c.params.fingerprint() {
        let defaults = sc.defaults.clone();
        if let Some(sql) = c.params.sync_sql(&sc.params, &defaults) {
            write_query(&sql, &mut r.to_server);
            r.t.close(SegmentOwner::Proxy);
            c.params.apply_to(&mut sc.params, &defaults);
        }
        sc.params_fingerprint = c.params.fingerprint();
    }
    if let Some(begin) = c.routing.held_begin.take() {
        r.to_server.extend_from_slice(&begin);
        r.t.close(SegmentOwner::Proxy);
    }
    match &rejection {
        Some(e) => {
            let simple = unit.first().is_some_and(|f| f.tag == b'Q');
            r.inject_rejection(simple, e);
            if let Some(sync) = unit.iter().find(|f| f.tag == b'S') {
                on_client_frame(c, sc, &mut r, sync, shared);
            }
        }
        None => {
            for f in &unit {
                forward(c, sc, &mut r.t, &mut r.to_server, f, shared);
            }
        }
    }
    let outcome = relay_loop(c, sc, &mut r, shared, statement_seconds).await;
    set_cancel(&c.cancel_slot, None);
    c.to_server = std::mem::take(&mut r.to_server);
    match outcome {
        Ok(o) => finish(c, conn, o, &r.t).await,
        Err(e) => {
            conn.broken = true;
            discard_if_broken(conn);
            Err(e)
        }
    }
}

async fn relay_loop(
    c: &mut Client,
    sc: &mut ServerConn,
    r: &mut Relay,
    shared: &Shared,
    statement_seconds: &prometheus::Histogram,
) -> Result<Outcome, SessionError> {
    let mut terminate = false;
    let mut client_eof = false;
    loop {
        while !terminate && r.to_server.len() < HIGH_WATER && may_forward_next(c, &r.t) {
            match c.io.buffered_frame()? {
                Some(f) if f.tag == b'X' => terminate = true,
                Some(f) => on_client_frame(c, sc, r, &f, shared),
                None => break,
            }
        }
        let idle = r.t.is_idle() && r.to_server.is_empty() && sc.rbuf.is_empty();
        if idle
            && r.t.status == b'I'
            && (terminate || client_eof || c.pool_mode == PoolMode::Transaction)
        {
            return Ok(if terminate || client_eof {
                Outcome::Gone { clean: true }
            } else {
                Outcome::Released
            });
        }
        if terminate || client_eof {
            // Left inside a transaction or mid-request: the server state is unknown.
            return Ok(Outcome::Gone { clean: false });
        }
        let (mut crd, mut cwr) = c.io.stream.split();
        let (mut srd, mut swr) = sc.stream.split();
        tokio::select! {
            n = crd.read_buf(&mut c.io.rbuf), if r.to_server.len() < HIGH_WATER => {
                if !matches!(n, Ok(n) if n > 0) {
                    client_eof = true;
                }
            }
            n = srd.read_buf(&mut sc.rbuf), if c.io.wbuf.len() < HIGH_WATER => {
                match n {
                    Ok(n) if n > 0 => {
                        let ev = match r.t.scan(&mut sc.rbuf, &mut c.io.wbuf, &mut sc.prepared, &mut sc.params) {
                            Ok(ev) => ev,
                            Err(e) => return Ok(Outcome::ServerLost(e.to_string())),
                        };
                        if !ev.client_params.is_empty() {
                            // The client changed a setting here: the next sync must compare.
                            sc.params_fingerprint = 0;
                        }
                        for (k, v) in &ev.client_params {
                            c.params.set(k, v);
                        }
                        if let Some(status) = ev.client_status {
                            c.routing.state.on_ready_for_query(status);
                        }
                        if ev.latency_count > 0 {
                            // Pipelined requests answered in one read share their mean.
                            let mean = ev.latency_sum / f64::from(ev.latency_count);
                            for _ in 0..ev.latency_count {
                                statement_seconds.observe(mean);
                            }
                        }
                        if let Some((code, msg)) = ev.proxy_error {
                            tracing::warn!(client = c.id, %code, %msg, "proxy statement failed on the server");
                        }
                    }
                    Ok(_) => return Ok(Outcome::ServerLost("server closed the connection unexpectedly".into())),
                    Err(e) => return Ok(Outcome::ServerLost(e.to_string())),
                }
            }
            w = cwr.write_buf(&mut c.io.wbuf), if !c.io.wbuf.is_empty() => {
                if w.is_err() {
                    client_eof = true;
                    c.io.wbuf.clear();
                }
            }
            w = swr.write_buf(&mut r.to_server), if !r.to_server.is_empty() => {
                if let Err(e) = w {
                    return Ok(Outcome::ServerLost(e.to_string()));
                }
            }
        }
    }
}

async fn finish(
    c: &mut Client,
    mut conn: PooledConn,
    outcome: Outcome,
    t: &Tracker,
) -> Result<PumpEnd, SessionError> {
    match outcome {
        Outcome::Released => {
            conn.in_use = false;
            conn.last_used = Instant::now();
            drop(conn);
            Ok(PumpEnd::Released)
        }
        Outcome::Gone { clean } => {
            if clean && c.pool_mode == PoolMode::Session {
                // Session pooling hands the next client a clean session, as PgBouncer does.
                if conn.simple_query("DISCARD ALL").await.is_ok() {
                    conn.prepared.clear();
                    conn.params_fingerprint = 0;
                    conn.params = (*conn.defaults).clone();
                } else {
                    conn.broken = true;
                }
            } else if !clean {
                conn.broken = true;
            }
            conn.in_use = false;
            conn.last_used = Instant::now();
            discard_if_broken(conn);
            Ok(PumpEnd::ClientGone)
        }
        Outcome::ServerLost(reason) => {
            tracing::warn!(client = c.id, server = %conn.addr, %reason, "server connection lost");
            conn.broken = true;
            discard_if_broken(conn);
            // Keep the client usable: report the loss (unless the server's own error, downgraded
            // from FATAL, already did), then answer every request still waiting.
            // Between transactions in transaction pooling nobody asked: the loss is invisible.
            let unnoticed =
                c.pool_mode == PoolMode::Transaction && t.client_waiting() == 0 && t.status == b'I';
            if !t.server_fatal && !unnoticed {
                PgError::error(
                    "08006",
                    format!("server connection lost ({reason}); the transaction was aborted"),
                )
                .encode(&mut c.io.wbuf);
            }
            for _ in 0..t.client_waiting() {
                backend::ready_for_query(b'I', &mut c.io.wbuf);
            }
            c.skip_until_sync = t.client_open();
            c.routing.state.on_ready_for_query(b'I');
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
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = server.map(|s| s.cancel_key.clone());
}
