//! Server → client relay bookkeeping (the framing step on the way back): walks the headers of
//! server bytes, forwards them raw, and drops only the replies to messages the proxy injected
//! (re-prepares, parameter syncs). Pure: buffers in, buffers out.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::protocol::backend::{fatal_severity, parse_error_fields, parse_parameter_status};
use crate::protocol::frame::{peek_header, FrameError};
use crate::server::ServerStatements;

use super::segment::Segment;
pub use super::segment::SegmentOwner;

/// What the scanner saw in one pass, for the session's decisions and logs.
#[derive(Debug, Default, PartialEq)]
pub struct ScanEvents {
    pub ready: u32,
    /// Transaction status of the last ReadyForQuery that answered the client.
    pub client_status: Option<u8>,
    /// Seconds from the client's Sync/Query to its ReadyForQuery, summed over `ready` answers.
    pub latency_sum: f64,
    pub latency_count: u32,
    /// When the first of those answers was scanned (one clock read per pass).
    pub answered_at: Option<std::time::Instant>,
    /// SQLSTATE and message of an error answering the proxy's own query.
    pub proxy_error: Option<(String, String)>,
    /// Reported parameters changed by the client's own statements.
    pub client_params: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Forward,
    Drop,
}

/// Per server-attachment relay state.
#[derive(Debug)]
pub struct Tracker {
    segments: VecDeque<Segment>,
    /// Transaction status from the last ReadyForQuery.
    pub status: u8,
    pending: Option<(Action, usize)>,
    /// The server is in COPY FROM STDIN (CopyInResponse seen, CopyDone/CopyFail not yet sent).
    copy_in: bool,
    /// The server sent a FATAL error (it is closing); the client got it as an ERROR, or not at
    /// all when it arrived between the client's transactions.
    pub server_fatal: bool,
    /// Transaction pooling: between transactions the client does not own the server, so a
    /// FATAL then (a shutdown racing the release) is not the client's to see.
    pub drop_idle_fatal: bool,
    /// The status the client must see in ReadyForQuery instead of the server's: set while a
    /// transaction whose BEGIN the proxy holds uses a server only to prepare or describe
    /// (the server is idle; the client is in its transaction). An error turns it to failed.
    pub hold_status: Option<u8>,
    /// Answered segments kept for reuse, so a steady stream of requests allocates nothing.
    spare: Vec<Segment>,
}

/// Answered segments kept per tracker.
const SPARE_SEGMENTS: usize = 4;

impl Default for Tracker {
    fn default() -> Self {
        Self {
            spare: Vec::new(),
            segments: VecDeque::new(),
            status: b'I',
            pending: None,
            copy_in: false,
            server_fatal: false,
            drop_idle_fatal: false,
            hold_status: None,
        }
    }
}

impl Tracker {
    fn open(&mut self, owner: SegmentOwner) -> &mut Segment {
        let reuse = matches!(self.segments.back(), Some(s) if !s.closed && s.owner == owner);
        if !reuse {
            let seg = match self.spare.pop() {
                Some(mut seg) => {
                    seg.reset(owner);
                    seg
                }
                None => Segment::new(owner),
            };
            self.segments.push_back(seg);
        }
        self.segments
            .back_mut()
            .expect("a segment was just ensured")
    }

    /// A client message that gets no reply of its own (Bind, Execute, Describe...) was sent.
    pub fn client_message(&mut self) {
        self.open(SegmentOwner::Client);
    }

    /// A Sync or Query was sent for `owner`: one ReadyForQuery will answer it.
    pub fn close(&mut self, owner: SegmentOwner) {
        let seg = self.open(owner);
        seg.closed = true;
        seg.sent_at = Some(std::time::Instant::now());
    }

    /// A Sync was sent by the client.
    pub fn sync(&mut self) {
        let seg = self.open(SegmentOwner::Client);
        seg.closed = true;
        seg.by_sync = true;
        seg.sent_at = Some(std::time::Instant::now());
    }

    /// The proxy ends the client's open extended messages with a Sync of its own (a batch
    /// that only prepared and asked for a Flush), so the server can be released.
    /// Ready for a new attachment: the state of the last one is forgotten, its memory kept.
    pub fn reset(&mut self) {
        while let Some(seg) = self.segments.pop_front() {
            if self.spare.len() < SPARE_SEGMENTS {
                self.spare.push(seg);
            }
        }
        self.status = b'I';
        self.pending = None;
        self.copy_in = false;
        self.server_fatal = false;
        self.drop_idle_fatal = false;
        self.hold_status = None;
    }

    pub fn proxy_sync(&mut self) {
        let seg = self.open(SegmentOwner::Client);
        seg.closed = true;
        seg.by_sync = true;
        seg.swallow_ready = true;
    }

    /// The client ended COPY FROM STDIN (CopyDone or CopyFail). Syncs it sent during the copy
    /// were ignored by the server, so their segments merge back into one still-open segment;
    /// the Sync after CopyDone closes it.
    pub fn copy_done(&mut self) {
        if !std::mem::take(&mut self.copy_in) {
            return;
        }
        let Some(first) = self
            .segments
            .iter()
            .position(|s| s.owner == SegmentOwner::Client)
        else {
            return;
        };
        let mut merged = self.segments.split_off(first);
        let mut seg = merged.pop_front().expect("position found a segment");
        for mut other in merged {
            seg.parses.append(&mut other.parses);
            seg.binds.append(&mut other.binds);
            seg.closes.append(&mut other.closes);
        }
        if seg.by_sync {
            seg.closed = false;
            seg.by_sync = false;
        }
        self.segments.push_back(seg);
    }

    /// A Parse was sent; `swallow` when the proxy injected it and the client expects no reply.
    pub fn parse_sent(&mut self, name: Option<Arc<str>>, swallow: bool) {
        let seg = self.open(SegmentOwner::Client);
        seg.parses.push_back((name, swallow));
    }

    /// A Bind was sent; `swallow` when the proxy injected it.
    pub fn bind_sent(&mut self, swallow: bool) {
        self.open(SegmentOwner::Client).binds.push_back(swallow);
    }

    /// A Close was sent; `swallow` when the proxy injected it.
    pub fn close_sent(&mut self, swallow: bool) {
        self.open(SegmentOwner::Client).closes.push_back(swallow);
    }

    /// The proxy injected a Bind whose BindComplete the client must not see.
    pub fn injected_bind(&mut self) {
        self.bind_sent(true);
    }

    /// The proxy injected a Close whose CloseComplete the client must not see.
    pub fn injected_close(&mut self) {
        self.close_sent(true);
    }

    /// No reply is outstanding and nothing unsynced was sent (every segment ended in a
    /// ReadyForQuery): the server may be released.
    pub fn is_idle(&self) -> bool {
        self.pending.is_none() && self.segments.is_empty()
    }

    /// The server waits for the client's COPY data, not the other way round.
    pub fn copy_in(&self) -> bool {
        self.copy_in
    }

    /// Number of client Sync/Query still waiting for ReadyForQuery.
    pub fn client_waiting(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.closed && s.owner == SegmentOwner::Client)
            .count()
    }

    /// True when the client has sent extended messages without their Sync yet.
    pub fn client_open(&self) -> bool {
        matches!(self.segments.back(), Some(s) if !s.closed && s.owner == SegmentOwner::Client)
    }

    /// Moves complete or partial server messages from `input` to `out`, dropping injected
    /// replies. `prepared` learns which statements failed to prepare.
    pub fn scan(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        prepared: &mut ServerStatements,
        server_params: &mut std::collections::HashMap<String, String>,
    ) -> Result<ScanEvents, FrameError> {
        let mut ev = ScanEvents::default();
        let mut pos = 0;
        let mut fwd_from: Option<usize> = None;
        let flush = |out: &mut BytesMut, input: &BytesMut, from: &mut Option<usize>, to: usize| {
            if let Some(f) = from.take() {
                out.extend_from_slice(&input[f..to]);
            }
        };
        loop {
            if let Some((action, rem)) = self.pending {
                let n = rem.min(input.len() - pos);
                if action == Action::Forward {
                    fwd_from.get_or_insert(pos);
                } else {
                    flush(out, input, &mut fwd_from, pos);
                }
                pos += n;
                self.pending = if rem > n {
                    Some((action, rem - n))
                } else {
                    None
                };
                if self.pending.is_some() {
                    break;
                }
                continue;
            }
            let Some((tag, total)) = peek_header(&input[pos..], i32::MAX as usize)? else {
                break;
            };
            let complete = input.len() - pos >= total;
            if matches!(tag, b'Z' | b'S' | b'E') && !complete {
                break;
            }
            // Only an answer to a waiting request is downgraded: an unsolicited FATAL inside a
            // transaction (idle-in-transaction timeout) must still end the client's session.
            let mut idle_fatal = false;
            if tag == b'E' {
                let body = &mut input[pos + 5..pos + total];
                if self.client_waiting() > 0 {
                    self.server_fatal |= fatal_severity(body, true);
                } else if self.drop_idle_fatal && self.status == b'I' {
                    idle_fatal = fatal_severity(body, false);
                    self.server_fatal |= idle_fatal;
                }
            }
            let body = &input[pos + 5..(pos + total).min(input.len())];
            let client_owned = self
                .segments
                .front()
                .is_none_or(|s| s.owner == SegmentOwner::Client);
            let action = if idle_fatal {
                Action::Drop
            } else {
                self.classify_reply(tag, body, prepared, server_params, &mut ev)
            };
            if let (Some(held), true) = (self.hold_status, client_owned) {
                match tag {
                    b'E' => self.hold_status = Some(b'E'),
                    b'Z' if total > 5 => input[pos + 5] = held,
                    _ => {}
                }
            }
            self.pending = Some((action, total));
        }
        flush(out, input, &mut fwd_from, pos);
        input.advance(pos);
        Ok(ev)
    }

    fn classify_reply(
        &mut self,
        tag: u8,
        body: &[u8],
        prepared: &mut ServerStatements,
        server_params: &mut std::collections::HashMap<String, String>,
        ev: &mut ScanEvents,
    ) -> Action {
        let owner = self
            .segments
            .front()
            .map(|s| s.owner)
            .unwrap_or(SegmentOwner::Client);
        let default = if owner == SegmentOwner::Proxy {
            Action::Drop
        } else {
            Action::Forward
        };
        match tag {
            b'Z' => {
                self.status = body.first().copied().unwrap_or(b'I');
                let seg = self.segments.pop_front();
                let swallow = seg.as_ref().is_some_and(|s| s.swallow_ready);
                if owner == SegmentOwner::Client && !swallow {
                    ev.client_status = Some(self.status);
                    if let Some(at) = seg.as_ref().and_then(|s| s.sent_at) {
                        let now = *ev.answered_at.get_or_insert_with(std::time::Instant::now);
                        ev.latency_sum += now.saturating_duration_since(at).as_secs_f64();
                        ev.latency_count += 1;
                    }
                }
                if let Some(seg) = seg.filter(|_| self.spare.len() < SPARE_SEGMENTS) {
                    self.spare.push(seg);
                }
                ev.ready += 1;
                if swallow {
                    Action::Drop
                } else {
                    default
                }
            }
            b'E' => {
                if let Some(seg) = self.segments.front_mut() {
                    // The server skips everything up to Sync: nothing pending will be answered.
                    seg.binds.clear();
                    seg.closes.clear();
                    for name in seg.parses.drain(..).filter_map(|(n, _)| n) {
                        prepared.remove(&name);
                    }
                }
                if owner == SegmentOwner::Proxy {
                    ev.proxy_error = Some(parse_error_fields(body));
                }
                default
            }
            b'S' => {
                if let Some((k, v)) = parse_parameter_status(body) {
                    server_params.insert(k.to_ascii_lowercase(), v.clone());
                    if owner == SegmentOwner::Client {
                        ev.client_params.push((k, v));
                    }
                }
                default
            }
            b'1' => match self.segments.front_mut() {
                Some(seg) => {
                    if matches!(seg.parses.pop_front(), Some((_, true))) {
                        Action::Drop
                    } else {
                        default
                    }
                }
                None => default,
            },
            b'G' => {
                self.copy_in = true;
                default
            }
            b'2' | b'3' => {
                let injected = self.segments.front_mut().and_then(|seg| {
                    let queue = if tag == b'2' {
                        &mut seg.binds
                    } else {
                        &mut seg.closes
                    };
                    queue.pop_front()
                });
                if injected == Some(true) {
                    Action::Drop
                } else {
                    default
                }
            }
            _ => default,
        }
    }
}
