//! The relay loop while a client holds a server connection (… → pool → **server** and back):
//! client messages go through the session machine (which routes, checks, renames and refuses)
//! to the server; server bytes come back raw through the machine's scanner. Ends when the
//! transaction ends (transaction pooling) or the client leaves.

use std::time::Instant;

use bytes::BytesMut;

use super::client::Client;
use super::machine::Ctx;
use super::outbox::Outbox;
use super::record::Recorder;
use super::timeouts::{Expiry, Waiting, Watch};
use super::wait::{next_event, Event};
use super::SessionError;
use crate::classify::ClassifyCache;
use crate::config::PoolMode;
use crate::pool::PooledConn;
use crate::protocol::frame::{peek_header, Frame};
use crate::protocol::Front;
use crate::server::ServerConn;
use crate::shared::cancel::{cancel_server, CancelSlot};
use crate::shared::Shared;

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
    Gone {
        clean: bool,
    },
    ServerLost(String),
    /// query_timeout: the request was cancelled on the server and the connection given up.
    TimedOut(Expiry),
}

/// The relay's clock: the statement-latency histogram, and when the last reply came.
struct Timing<'h> {
    statement_seconds: &'h prometheus::Histogram,
    replied: Option<Instant>,
}

/// Runs `unit` (already planned onto this connection) and everything after it until the
/// attachment ends. Returns how it ended and when: the last reply's arrival when there was
/// one, so the clock is not read again for it.
pub async fn pump(
    c: &mut Client,
    mut conn: PooledConn,
    unit: Vec<Frame>,
    shared: &Shared,
    cache: &ClassifyCache,
    statement_seconds: &prometheus::Histogram,
) -> Result<(PumpEnd, Instant), SessionError> {
    let sc: &mut ServerConn = &mut conn;
    sc.in_use = true;
    sc.prepared.set_cap(c.session.snap.max_prepared_statements);
    set_cancel(&c.cancel_slot, Some(sc));
    let mut out = Outbox::new(match c.to_server.capacity() {
        0 => super::spare::take(),
        _ => std::mem::take(&mut c.to_server),
    });
    out.buf.clear();
    if sc.params_fingerprint != c.params.fingerprint() {
        let defaults = sc.defaults.clone();
        if let Some(sql) = c.params.sync_sql(&sc.params, &defaults) {
            c.session.proxy_query(&sql, &mut out.buf);
            c.params.apply_to(&mut sc.params, &defaults);
        }
        sc.params_fingerprint = c.params.fingerprint();
    }
    c.session.send_held(&mut out.buf);
    let mut recorder = Recorder {
        shared,
        client: c.id,
    };
    let mut ctx = Ctx {
        cache,
        registry: &shared.statements,
        observer: &mut recorder,
    };
    for f in &unit {
        forward(c, f, &mut ctx, &mut sc.prepared, &mut out);
    }
    c.keep_unit(unit);
    let mut timing = Timing {
        statement_seconds,
        replied: None,
    };
    let outcome = relay_loop(c, sc, &mut out, &mut ctx, &mut timing).await;
    set_cancel(&c.cancel_slot, None);
    if let Ok(Outcome::TimedOut(e)) = &outcome {
        let limits = &shared.metrics.client_limits;
        limits.with_label_values(&[e.label()]).inc();
    }
    c.to_server = out.into_buf(KEEP_BUFFER);
    match outcome {
        Ok(o) => {
            // One reading for both: the connection's release and the transaction's end.
            let ended = timing.replied.unwrap_or_else(Instant::now);
            Ok((finish(c, conn, o, ended).await?, ended))
        }
        Err(e) => {
            c.session.detach();
            conn.broken = true;
            discard_if_broken(conn);
            Err(e)
        }
    }
}

/// A server buffer grown past this by one large batch is not kept for the next one.
const KEEP_BUFFER: usize = 64 * 1024;

/// One client message through the machine into the outbox.
fn forward(
    c: &mut Client,
    f: &Frame,
    ctx: &mut Ctx<'_>,
    prepared: &mut crate::server::ServerStatements,
    out: &mut Outbox,
) {
    c.session.client_frame(f, ctx, prepared, &mut out.buf);
    if let Some(long) = c.session.take_deferred() {
        out.defer(long);
    }
}

/// More client bytes are wanted: below the high-water mark, or a message is still incomplete
/// (it cannot be forwarded until whole).
fn wants_client_bytes(rbuf: &BytesMut, max: usize, high_water: usize) -> bool {
    rbuf.len() < high_water || matches!(peek_header(rbuf, max), Ok(Some((_, n))) if n > rbuf.len())
}

async fn relay_loop(
    c: &mut Client,
    sc: &mut ServerConn,
    out: &mut Outbox,
    ctx: &mut Ctx<'_>,
    timing: &mut Timing<'_>,
) -> Result<Outcome, SessionError> {
    let mut terminate = false;
    let mut client_eof = false;
    let snap = &c.session.snap;
    let limits = (snap.query_timeout, snap.idle_transaction_timeout);
    // One timer per attachment, and none at all unless a limit is on.
    let timed = !limits.0.is_zero() || !limits.1.is_zero();
    let mut watch = Watch::new(timed, limits);
    let mut timer = std::pin::pin!(watch.sleep());
    loop {
        while !terminate
            && out.len() < c.high_water
            && c.session.may_forward(c.io.rbuf.first().copied())
        {
            match c.io.buffered_frame()? {
                Some(f) if f.front() == Front::Terminate => terminate = true,
                Some(f) => forward(c, &f, ctx, &mut sc.prepared, out),
                None => break,
            }
        }
        let leaving = terminate || client_eof;
        if out.is_empty() && sc.rbuf.is_empty() && c.session.may_release(leaving) {
            return Ok(if leaving {
                Outcome::Gone { clean: true }
            } else {
                Outcome::Released
            });
        }
        if leaving {
            // Left inside a transaction or mid-request: the server state is unknown.
            return Ok(Outcome::Gone { clean: false });
        }
        let read_client = out.len() < c.high_water
            && wants_client_bytes(&c.io.rbuf, c.io.max_message, c.high_water);
        let read_server = c.io.wbuf.len() < c.high_water;
        let waiting = c.session.waiting();
        let running = watch.update(|| waiting, timer.as_mut());
        let server_first = waiting == Waiting::Server;
        let reads = (read_client, read_server, server_first);
        match next_event(c, sc, out, reads, running).await {
            Event::Expired => {
                if let Some(e) = watch.armed() {
                    return expire(e, sc);
                }
            }
            ev => match on_event(ev, c, sc, timing) {
                Step::Go => {}
                Step::ClientGone => client_eof = true,
                Step::Answered => watch.answered(),
                Step::End(outcome) => return Ok(outcome),
            },
        }
    }
}

/// Where the relay loop goes after one I/O event.
enum Step {
    Go,
    ClientGone,
    /// A request was answered: the next outstanding one gets its own full time.
    Answered,
    End(Outcome),
}

fn on_event(ev: Event, c: &mut Client, sc: &mut ServerConn, timing: &mut Timing<'_>) -> Step {
    match ev {
        Event::ClientRead(Ok(n)) if n > 0 => Step::Go,
        Event::ClientRead(_) => Step::ClientGone,
        Event::ServerRead(Ok(0)) => Step::End(Outcome::ServerLost(
            "server closed the connection unexpectedly".into(),
        )),
        Event::ServerRead(Ok(_)) => match on_server_bytes(c, sc, timing) {
            Ok(0) => Step::Go,
            Ok(_) => Step::Answered,
            Err(lost) => Step::End(lost),
        },
        Event::ServerRead(Err(e)) | Event::ServerWrote(Err(e)) => {
            Step::End(Outcome::ServerLost(e.to_string()))
        }
        Event::ClientWrote(Err(_)) => {
            c.io.wbuf.clear();
            Step::ClientGone
        }
        Event::ClientWrote(Ok(())) | Event::ServerWrote(Ok(())) | Event::Expired => Step::Go,
    }
}

/// A timer ran out: a query timeout cancels the request on the server and answers the client;
/// an idle transaction ends the session.
fn expire(e: Expiry, sc: &ServerConn) -> Result<Outcome, SessionError> {
    match e {
        Expiry::Query(_) => {
            let key = sc.cancel_key.clone();
            // Closing the socket alone would leave the backend running the statement.
            tokio::spawn(async move { cancel_server(&key).await });
            Ok(Outcome::TimedOut(e))
        }
        Expiry::IdleTransaction(_) => Err(SessionError::Limit {
            limit: e.label(),
            error: e.error(),
        }),
    }
}

/// Server bytes arrived: the machine scans them into client bytes and events. `Ok`: how many
/// requests were answered; `Err` carries the outcome when the server broke the protocol.
fn on_server_bytes(
    c: &mut Client,
    sc: &mut ServerConn,
    timing: &mut Timing<'_>,
) -> Result<u32, Outcome> {
    let ev = match c.session.scan(
        &mut sc.rbuf,
        &mut c.io.wbuf,
        &mut sc.prepared,
        &mut sc.params,
    ) {
        Ok(ev) => ev,
        Err(e) => return Err(Outcome::ServerLost(e.to_string())),
    };
    if !ev.client_params.is_empty() {
        // The client changed a setting here: the next sync must compare.
        sc.params_fingerprint = 0;
    }
    for (k, v) in &ev.client_params {
        c.params.set(k, v);
    }
    if ev.latency_count > 0 {
        // Pipelined requests answered in one read share their mean.
        let mean = ev.latency_sum / f64::from(ev.latency_count);
        for _ in 0..ev.latency_count {
            timing.statement_seconds.observe(mean);
        }
    }
    timing.replied = ev.answered_at.or(timing.replied);
    if let Some((code, msg)) = ev.proxy_error {
        tracing::warn!(client = c.id, %code, %msg, "proxy statement failed on the server");
    }
    Ok(ev.ready)
}

async fn finish(
    c: &mut Client,
    mut conn: PooledConn,
    outcome: Outcome,
    ended: Instant,
) -> Result<PumpEnd, SessionError> {
    match outcome {
        Outcome::Released => {
            c.session.detach();
            conn.in_use = false;
            conn.last_used = ended;
            // Dropped: to the client waiting longest, else into the stash.
            drop(conn);
            Ok(PumpEnd::Released)
        }
        Outcome::Gone { clean } => {
            c.session.detach();
            if clean && c.session.pool_mode() == PoolMode::Session {
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
            // Keep the client usable: the machine reports the loss and answers every request
            // still waiting.
            c.session.server_lost(&reason, &mut c.io.wbuf);
            Ok(PumpEnd::Released)
        }
        Outcome::TimedOut(e) => {
            tracing::warn!(client = c.id, server = %conn.addr, limit = e.label(), "request cancelled on the server; its connection is closed");
            conn.broken = true;
            discard_if_broken(conn);
            c.session.server_gone(e.error(), &mut c.io.wbuf);
            Ok(PumpEnd::Released)
        }
    }
}

fn discard_if_broken(conn: PooledConn) {
    if conn.broken {
        // Taking it out of the pool closes the socket instead of recycling it.
        conn.discard();
    }
}

fn set_cancel(slot: &CancelSlot, server: Option<&ServerConn>) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = server.map(|s| s.cancel_key.clone());
}
