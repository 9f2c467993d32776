//! Session step, attached, outgoing side: how the machine's output reaches the server (long
//! client messages are forwarded from the client's own buffer, not copied) and how the
//! attachment ends when the proxy gives the server up.

use bytes::{Bytes, BytesMut};

use super::{Attachment, Held, Session};
use crate::config::PoolMode;
use crate::protocol::backend::{self, PgError};
use crate::protocol::TxnStatus;

use super::super::timeouts::Waiting;

/// Client messages at least this long are not copied into the server buffer: a 200 MiB Query
/// then costs its own size once, in the client's read buffer.
pub const DEFER_BYTES: usize = 32 * 1024;

impl Attachment {
    /// Forwards `raw` unchanged: copied when short; a long one is left for the relay to write
    /// at this point of `out` (one at a time; a second is copied after it, in order).
    pub(super) fn put_raw(&mut self, raw: &Bytes, out: &mut BytesMut) {
        self.put_raw_from(raw, 0, out);
    }

    /// `put_raw` of `raw[from..]`.
    pub(super) fn put_raw_from(&mut self, raw: &Bytes, from: usize, out: &mut BytesMut) {
        if raw.len() - from < DEFER_BYTES || self.deferred.is_some() {
            out.extend_from_slice(&raw[from..]);
        } else {
            self.deferred = Some((out.len(), raw.slice(from..)));
        }
    }
}

/// Inserts a deferred message at its place in `out` (for callers that copy anyway).
pub fn splice(out: &mut BytesMut, (at, raw): (usize, Bytes)) {
    let tail = out.split_off(at);
    out.extend_from_slice(&raw);
    out.unsplit(tail);
}

impl Session {
    /// The long message the last `client_frame` left to the caller: it goes after the first
    /// `at` bytes the caller's server buffer held then.
    pub fn take_deferred(&mut self) -> Option<(usize, Bytes)> {
        self.link.as_mut()?.deferred.take()
    }

    /// `client_frame` with a long message copied into `out` in its place, for callers without
    /// an outbox (the test and fuzz harnesses, benchmarks).
    pub fn client_frame_copied(
        &mut self,
        f: &crate::protocol::frame::Frame,
        ctx: &mut super::Ctx,
        server: &mut crate::server::ServerStatements,
        out: &mut BytesMut,
    ) {
        self.client_frame(f, ctx, server, out);
        if let Some(d) = self.take_deferred() {
            splice(out, d);
        }
    }

    /// What the attached session waits on, for the relay's timers.
    pub fn waiting(&self) -> Waiting {
        let Some(a) = &self.link else {
            return Waiting::Nothing;
        };
        let t = &a.tracker;
        if t.client_waiting() > 0 && !t.copy_in() {
            Waiting::Server
        } else if t.is_idle() && self.status() != TxnStatus::Idle {
            Waiting::ClientInTransaction
        } else {
            Waiting::Nothing
        }
    }

    /// The server connection died: answer every request still waiting (unless the server's
    /// own error, downgraded from FATAL, already did) and forget the server's transaction.
    pub fn server_lost(&mut self, reason: &str, reply: &mut BytesMut) {
        let e = PgError::error(
            "08006",
            format!("server connection lost ({reason}); the transaction was aborted"),
        );
        self.server_gone(e, reply);
    }

    /// The proxy gave the server connection up (or lost it): `e` answers the client's first
    /// waiting request, ReadyForQuery every waiting one.
    pub fn server_gone(&mut self, e: PgError, reply: &mut BytesMut) {
        let Some(a) = self.link.take() else { return };
        let t = &a.tracker;
        let unnoticed =
            self.pool_mode == PoolMode::Transaction && t.client_waiting() == 0 && t.status == b'I';
        if !t.server_fatal && !unnoticed {
            e.encode(reply);
        }
        if a.tracker.hold_status.is_some() && self.held != Held::None {
            self.held = Held::Begin { failed: true };
        } else {
            self.held = Held::None;
            self.route.on_ready_for_query(b'I');
        }
        for _ in 0..t.client_waiting() {
            backend::ready_for_query(self.status().byte(), reply);
        }
        self.skip = t.client_open();
    }
}
