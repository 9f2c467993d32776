//! Read-your-writes for one client: after it commits a write, its reads need a replica that
//! has replayed that write. Costs no query: the commit's WAL position is bounded by the first
//! primary LSN the health checker samples after the commit, and until such a sample exists the
//! client's reads go to the primary. Pure: the session feeds it times and the current view.

use std::time::{Duration, Instant};

use super::select::Need;
use super::view::{ClusterId, View};
use super::Lsn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    /// Committed at `at`; the position is not known yet.
    WroteAt {
        at: Instant,
        until: Instant,
    },
    /// Reads need this position (resolved from a later primary sample, or given by the client).
    Lsn {
        lsn: Lsn,
        until: Instant,
    },
}

/// A client's outstanding write positions, per cluster whose WAL replicas replay.
#[derive(Clone, Debug)]
pub struct ReadYourWrites {
    pub enabled: bool,
    bound: Duration,
    pending: [Pending; 2],
}

impl ReadYourWrites {
    pub fn new(enabled: bool, bound: Duration) -> Self {
        Self {
            enabled,
            bound,
            pending: [Pending::None; 2],
        }
    }

    /// A transaction that wrote to `cluster`'s primary committed at `at`.
    pub fn wrote(&mut self, cluster: ClusterId, at: Instant) {
        if self.enabled {
            self.pending[cluster.index()] = Pending::WroteAt {
                at,
                until: at + self.bound,
            };
        }
    }

    /// The client says its reads need `lsn` (learned from another pgdecomp or the application).
    /// It applies to both clusters: the client knows which database it wrote.
    pub fn require(&mut self, lsn: Lsn, now: Instant) {
        for p in &mut self.pending {
            *p = Pending::Lsn {
                lsn,
                until: now + self.bound,
            };
        }
    }

    /// Nothing pending: reads may go anywhere (checked first, so most reads skip the clock).
    pub fn is_idle(&self) -> bool {
        self.pending.iter().all(|p| *p == Pending::None)
    }

    /// A commit whose position is not known yet.
    pub fn unresolved(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::WroteAt { .. }))
    }

    pub fn clear(&mut self) {
        self.pending = [Pending::None; 2];
    }

    /// The strongest position still required, for SHOW pgdecomp.min_lsn.
    pub fn required(&self) -> Option<Lsn> {
        self.pending
            .iter()
            .filter_map(|p| match p {
                Pending::Lsn { lsn, .. } => Some(*lsn),
                _ => None,
            })
            .max()
    }

    /// What a read from `cluster`'s servers needs now. Resolves a commit time to a position
    /// once the checker has sampled the primary after it, and forgets a requirement whose bound
    /// passed.
    pub fn need(&mut self, view: &View, cluster: ClusterId, now: Instant) -> Need {
        let source = view.wal_source(cluster);
        let slot = &mut self.pending[source.index()];
        match *slot {
            Pending::None => Need::Any,
            Pending::WroteAt { until, .. } | Pending::Lsn { until, .. } if now >= until => {
                *slot = Pending::None;
                Need::Any
            }
            Pending::WroteAt { at, until } => {
                match view.cluster(source).writer_probe() {
                    Some(p) if p.sent > at => {
                        *slot = Pending::Lsn { lsn: p.lsn, until };
                        Need::AtLeast(p.lsn)
                    }
                    // The position is not known yet: only the primary surely has the write.
                    _ => Need::Primary,
                }
            }
            // Replicas that have replayed it qualify; the requirement lasts until its bound, since
            // a server that catches up now may still be behind for the other cluster's reads.
            Pending::Lsn { lsn, .. } => Need::AtLeast(lsn),
        }
    }
}
