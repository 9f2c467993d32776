//! Metrics of the phase-7 cutover beside the pipeline: the step a cutover run from this process
//! is at, the ci transactions this instance holds, how long each waited, how long the CI
//! standby took to catch up, and how cutovers ended.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::topology::reg;

/// A hold is meant to last well under a second; an abort bounds it at tens of seconds.
const HOLD_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone)]
pub struct CutoverMetrics {
    /// 1 for the step a cutover coordinated by this process is at (all 0 when none runs).
    pub step: IntGaugeVec,
    pub held: IntGauge,
    pub hold_seconds: Histogram,
    pub catchup_seconds: Gauge,
    pub outcomes: IntCounterVec,
}

impl CutoverMetrics {
    pub fn new(r: &Registry) -> Self {
        let m = Self {
            step: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "pgdecomp_cutover_step",
                        "1 for the step a cutover coordinated by this process is at",
                    ),
                    &["step"],
                )
                .expect("valid metric literal"),
            ),
            held: reg(
                r,
                IntGauge::new(
                    "pgdecomp_cutover_held_transactions",
                    "ci write transactions waiting for the cutover's hold to end now",
                )
                .expect("valid metric literal"),
            ),
            hold_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pgdecomp_cutover_hold_seconds",
                        "How long each ci write transaction held by a cutover waited",
                    )
                    .buckets(HOLD_BUCKETS.to_vec()),
                )
                .expect("valid metric literal"),
            ),
            catchup_seconds: reg(
                r,
                Gauge::new(
                    "pgdecomp_cutover_catchup_seconds",
                    "How long the CI standby leader took to replay the recorded WAL position in the last cutover run from here",
                )
                .expect("valid metric literal"),
            ),
            outcomes: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "pgdecomp_cutover_total",
                        "Cutovers coordinated by this process, by outcome",
                    ),
                    &["outcome"],
                )
                .expect("valid metric literal"),
            ),
        };
        for s in crate::cutover::Step::ALL {
            m.step.with_label_values(&[s.label()]).set(0);
        }
        for o in crate::cutover::Outcome::ALL {
            m.outcomes.with_label_values(&[o.label()]).inc_by(0);
        }
        m
    }

    /// Marks `step` as the current one (`None`: no cutover runs).
    pub fn at(&self, step: Option<crate::cutover::Step>) {
        for s in crate::cutover::Step::ALL {
            let on = Some(s) == step;
            self.step.with_label_values(&[s.label()]).set(i64::from(on));
        }
    }
}
