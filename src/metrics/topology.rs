//! Metrics of the topology beside the pipeline: per server (up, role, lag, state changes) from
//! each health-check round, and how reads and writes were placed on servers.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::route::Target;
use crate::topology::{ClusterId, NodeState, Via, View};

const ROLES: [&str; 4] = ["primary", "standby_leader", "leader", "replica"];
const VIAS: [Via; 4] = [
    Via::Primary,
    Via::Replica,
    Via::NoReplica,
    Via::ReadYourWrites,
];

pub struct TopologyMetrics {
    pub up: IntGaugeVec,
    pub role: IntGaugeVec,
    pub in_rotation: IntGaugeVec,
    pub writable: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub lag_bytes: GaugeVec,
    pub state_changes: IntCounterVec,
    pub placements: IntCounterVec,
    /// Per target, per `Via` in `VIAS` order: resolved once, counted on every checkout.
    placed: Vec<[IntCounter; 4]>,
    pub primary_wait: Histogram,
    pub primary_unavailable: IntCounterVec,
    /// The WAL archive backlog and the throttle that acts on it.
    pub throttle: super::ThrottleMetrics,
}

/// Registers `c` and hands it back (each metric family is registered once, at start).
pub(super) fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

impl TopologyMetrics {
    pub fn new(r: &Registry) -> Self {
        let server = &["cluster", "server"];
        let ig = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric literal"),
            )
        };
        let fg = |name: &str, help: &str| {
            reg(
                r,
                GaugeVec::new(Opts::new(name, help), server).expect("valid metric literal"),
            )
        };
        let ic = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric literal"),
            )
        };
        let placements = ic(
            "pgdecomp_server_placements_total",
            "Checkouts by target and how the server was chosen (primary, replica, no_replica, read_your_writes)",
            &["db_config_name", "via"],
        );
        let primary_unavailable = ic(
            "pgdecomp_primary_unavailable_total",
            "Requests refused because no writable primary appeared in time",
            &["db_config_name"],
        );
        // Zero series from the start, so a dashboard and alerts see the family before an outage.
        for t in Target::ALL.iter().filter(|t| !t.is_replica()) {
            let _ = primary_unavailable.with_label_values(&[t.label()]);
        }
        let placed = Target::ALL
            .iter()
            .map(|t| VIAS.map(|v| placements.with_label_values(&[t.label(), v.label()])))
            .collect();
        Self {
            up: ig("pgdecomp_server_up", "1 when the last health check of the server succeeded", server),
            role: ig(
                "pgdecomp_server_role",
                "1 for the server's current role (primary, standby_leader, replica; leader when unchecked)",
                &["cluster", "server", "role"],
            ),
            in_rotation: ig("pgdecomp_server_in_rotation", "1 when the server may serve reads", server),
            writable: ig("pgdecomp_server_writable", "1 when the server takes writes", server),
            lag_seconds: fg(
                "pgdecomp_server_lag_seconds",
                "Seconds since the last replayed commit while behind the primary (0 when caught up)",
            ),
            lag_bytes: fg("pgdecomp_server_lag_bytes", "Bytes of WAL the server has not replayed"),
            state_changes: ic(
                "pgdecomp_server_state_changes_total",
                "Health state transitions, by the state entered",
                &["cluster", "server", "state"],
            ),
            placements,
            placed,
            primary_wait: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pgdecomp_primary_wait_seconds",
                        "Time requests waited for a writable primary (switchover, failover)",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
                )
                .expect("valid metric literal"),
            ),
            primary_unavailable,
            throttle: super::ThrottleMetrics::new(r),
        }
    }

    pub fn placed(&self, target: Target, via: Via) -> &IntCounter {
        let i = VIAS.iter().position(|v| *v == via).unwrap_or(0);
        &self.placed[target as usize][i]
    }

    /// Sets the per-server series from `next`, counts state changes against `prev`, and drops
    /// the series of servers that left.
    pub fn record(&self, prev: &View, next: &View) {
        self.throttle.record(prev, next);
        for id in ClusterId::ALL {
            let (c, pc) = (next.cluster(id), prev.cluster(id));
            let cluster = id.label();
            for n in &c.nodes {
                let l = [cluster, n.addr.as_str()];
                let state = n.state();
                self.up.with_label_values(&l).set(i64::from(
                    state != NodeState::Down && state != NodeState::Unknown,
                ));
                for role in ROLES {
                    self.role
                        .with_label_values(&[cluster, &n.addr, role])
                        .set(i64::from(n.role_label() == role));
                }
                self.in_rotation
                    .with_label_values(&l)
                    .set(i64::from(n.readable()));
                self.writable
                    .with_label_values(&l)
                    .set(i64::from(n.writable()));
                let (secs, bytes) = n
                    .probe()
                    .map_or((0.0, 0.0), |p| (p.lag_seconds, p.lag_bytes as f64));
                self.lag_seconds.with_label_values(&l).set(secs);
                self.lag_bytes.with_label_values(&l).set(bytes);
                let before = pc
                    .nodes
                    .iter()
                    .find(|p| p.addr == n.addr)
                    .map(|p| p.state());
                if before != Some(state) {
                    self.state_changes
                        .with_label_values(&[cluster, &n.addr, state.label()])
                        .inc();
                }
            }
            for gone in pc
                .nodes
                .iter()
                .filter(|p| !c.nodes.iter().any(|n| n.addr == p.addr))
            {
                let l = [cluster, gone.addr.as_str()];
                let _ = self.up.remove_label_values(&l);
                let _ = self.in_rotation.remove_label_values(&l);
                let _ = self.writable.remove_label_values(&l);
                let _ = self.lag_seconds.remove_label_values(&l);
                let _ = self.lag_bytes.remove_label_values(&l);
                for role in ROLES {
                    let _ = self.role.remove_label_values(&[cluster, &gone.addr, role]);
                }
            }
        }
    }
}
