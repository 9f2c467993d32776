//! Metrics of the WAL-archive throttle beside the pipeline: each primary's archive backlog as
//! the health checker read it, and the transactions the throttle held before pool checkout.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use super::topology::reg;
use crate::topology::{ClusterId, View};

/// Hold times span a health round (seconds) to `throttle.max_hold` (minutes).
const HOLD_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

pub struct ThrottleMetrics {
    /// Per server; present only while the count is known (a primary whose check login may
    /// read the archive status), so "absent" means unknown rather than zero.
    pub archive_ready: IntGaugeVec,
    pub held: IntCounter,
    pub waiting: IntGauge,
    pub hold_seconds: Histogram,
    pub refused: IntCounter,
}

impl ThrottleMetrics {
    pub fn new(r: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            reg(
                r,
                IntCounter::new(name, help).expect("valid metric literal"),
            )
        };
        Self {
            archive_ready: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "pgdecomp_wal_archive_ready_segments",
                        "WAL segments waiting to be archived on the primary (.ready files); absent when unknown",
                    ),
                    &["cluster", "server"],
                )
                .expect("valid metric literal"),
            ),
            held: counter(
                "pgdecomp_throttle_held_total",
                "Transactions of throttled clients held because their primary's WAL archive backlog was above throttle.archive_ready_threshold",
            ),
            waiting: reg(
                r,
                IntGauge::new(
                    "pgdecomp_throttle_waiting",
                    "Transactions held by the WAL-archive throttle now",
                )
                .expect("valid metric literal"),
            ),
            hold_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pgdecomp_throttle_hold_seconds",
                        "How long held transactions waited, until released or refused",
                    )
                    .buckets(HOLD_BUCKETS.to_vec()),
                )
                .expect("valid metric literal"),
            ),
            refused: counter(
                "pgdecomp_throttle_refused_total",
                "Held transactions refused (SQLSTATE 53000) after throttle.max_hold",
            ),
        }
    }

    /// Sets each server's backlog from `next`; drops the series of servers whose backlog is
    /// no longer known or that left.
    pub fn record(&self, prev: &View, next: &View) {
        for id in ClusterId::ALL {
            let cluster = id.label();
            for n in &next.cluster(id).nodes {
                let l = [cluster, n.addr.as_str()];
                match n.archive_ready {
                    Some(ready) => self
                        .archive_ready
                        .with_label_values(&l)
                        .set(i64::try_from(ready).unwrap_or(i64::MAX)),
                    None => {
                        let _ = self.archive_ready.remove_label_values(&l);
                    }
                }
            }
            let stays = |addr: &str| next.cluster(id).nodes.iter().any(|n| n.addr == addr);
            for gone in prev.cluster(id).nodes.iter().filter(|p| !stays(&p.addr)) {
                let _ = self
                    .archive_ready
                    .remove_label_values(&[cluster, gone.addr.as_str()]);
            }
        }
    }
}

/// Counts a transaction as held from creation to drop, however the hold ends (release,
/// refusal, or the client's session being killed).
pub struct Waiting<'a>(&'a IntGauge);

impl<'a> Waiting<'a> {
    pub fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
