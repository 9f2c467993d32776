//! Server → client relay bookkeeping (the framing step on the way back): one run of requests
//! that a ReadyForQuery will end, and which of its replies belong to the client.

use std::collections::VecDeque;
use std::sync::Arc;

/// Who is waiting for a run of replies ending in ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentOwner {
    Client,
    /// The proxy's own query (parameter sync): every reply is dropped.
    Proxy,
}

/// Requests up to and including one Sync or Query, i.e. one ReadyForQuery to come.
#[derive(Debug)]
pub struct Segment {
    pub owner: SegmentOwner,
    /// Sync/Query sent: a ReadyForQuery will end it.
    pub closed: bool,
    /// Closed by a Sync (which PostgreSQL ignores while in COPY FROM STDIN).
    pub(super) by_sync: bool,
    /// Closed by the proxy's own Sync: the client's replies pass, its ReadyForQuery does not.
    pub(super) swallow_ready: bool,
    /// When the client's Sync/Query was sent, for the statement latency histogram.
    pub(super) sent_at: Option<std::time::Instant>,
    /// Bind and Close messages sent and not yet acknowledged, in order: `true` for the
    /// proxy's own, whose BindComplete / CloseComplete the client must not see.
    pub(super) binds: VecDeque<bool>,
    pub(super) closes: VecDeque<bool>,
    /// Parse messages sent and not yet acknowledged (None = unnamed statement), with whether
    /// the proxy injected it (its ParseComplete is dropped).
    pub(super) parses: VecDeque<(Option<Arc<str>>, bool)>,
}

impl Segment {
    /// Makes an answered segment new again, keeping its queues' memory.
    pub(super) fn reset(&mut self, owner: SegmentOwner) {
        self.owner = owner;
        self.closed = false;
        self.by_sync = false;
        self.swallow_ready = false;
        self.sent_at = None;
        self.parses.clear();
        self.binds.clear();
        self.closes.clear();
    }

    pub(super) fn new(owner: SegmentOwner) -> Self {
        Self {
            owner,
            closed: false,
            by_sync: false,
            swallow_ready: false,
            sent_at: None,
            binds: VecDeque::new(),
            closes: VecDeque::new(),
            parses: VecDeque::new(),
        }
    }
}
