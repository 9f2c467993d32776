//! Observability beside the pipeline: every Prometheus collector is registered here, so all
//! metric names and labels are visible in one place. Sessions record what the pure steps return.

mod cutover;
mod http;
mod throttle;
mod topology;

pub use cutover::CutoverMetrics;
pub use http::serve;
pub use throttle::{ThrottleMetrics, Waiting};
pub use topology::TopologyMetrics;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Statement kinds in `StatementKind::strictness()` order, for pre-resolved counters.
const KINDS: [&str; 8] = [
    "read",
    "utility",
    "session",
    "transaction",
    "locking_read",
    "write",
    "ddl",
    "unknown",
];
/// Route reasons, in the order of `Reason::index()`.
const REASONS: [&str; 8] = [
    "read",
    "write",
    "pinned",
    "rollout_fallback",
    "unparsable",
    "session_group",
    "db_config",
    "begin_deferred",
];

/// Counters of one target resolved once, so the per-statement path does no label hashing.
pub struct TargetMetrics {
    pub transactions: IntCounter,
    pub transaction_seconds: Histogram,
    pub statement_seconds: Histogram,
    pub statements: [IntCounter; 8],
    pub routes: [IntCounter; 8],
    pub replica_fallback: IntCounter,
}

/// All collectors of one running proxy.
pub struct Metrics {
    pub registry: Registry,
    pub client_connections: IntCounter,
    pub clients: IntGauge,
    pub login_failures: IntCounterVec,
    pub pending_logins: IntGauge,
    pub login_delays: IntCounter,
    pub client_limits: IntCounterVec,
    pub server_connect_errors: IntCounterVec,
    pub statements: IntCounterVec,
    pub transactions: IntCounterVec,
    pub unparsable: IntCounter,
    pub schemas_used: IntCounterVec,
    pub cross_join: IntCounterVec,
    pub cross_db_modification: IntCounterVec,
    pub wrong_schema: IntCounterVec,
    pub locked_table_write: IntCounterVec,
    pub shadow_violations: IntCounterVec,
    pub shadow_routes: IntCounterVec,
    pub routed: IntCounterVec,
    /// Decisions of partial ci rollouts, `[RolloutName::index()][Side::index()]`.
    pub rollout_decisions: [[IntCounter; 2]; 2],
    pub rejected: IntCounterVec,
    pub replica_fallback: IntCounterVec,
    pub phase: IntGauge,
    /// etcd mod_revision of the phase applied from `[fleet]` (0: the phase came from the file).
    pub fleet_phase_revision: IntGauge,
    /// 1 while the `[fleet]` watch on etcd is up.
    pub fleet_connected: IntGauge,
    pub cutover: CutoverMetrics,
    pub reloads: IntCounterVec,
    pub catalog_reads: IntCounterVec,
    pub checkout_wait: Histogram,
    pub transaction_seconds: HistogramVec,
    pub statement_seconds: HistogramVec,
    pub pool_servers: IntGaugeVec,
    pub build_info: IntGaugeVec,
    /// Per target, in `Target::ALL` order.
    pub targets: Vec<TargetMetrics>,
    pub topology: TopologyMetrics,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric names are valid literals");
    r.register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric literal");
    r.register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

/// `pgdecomp_rollout_decisions_total{rollout, side}`, every series exported from start.
fn rollout_decisions(r: &Registry) -> [[IntCounter; 2]; 2] {
    let v = counter_vec(
        r,
        "pgdecomp_rollout_decisions_total",
        "Statements a ci rollout below 100 % decided, by rollout (ci_read, ci_write) and side (new target or fallback)",
        &["rollout", "side"],
    );
    ["ci_read", "ci_write"]
        .map(|rollout| ["new", "fallback"].map(|side| v.with_label_values(&[rollout, side])))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric literal");
    r.register(Box::new(g.clone()))
        .expect("each metric is registered once");
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric literal");
    r.register(Box::new(g.clone()))
        .expect("each metric is registered once");
    g
}

/// Latency buckets from 100 µs to 30 s: pooler overheads and slow transactions both resolve.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// A latency histogram per db_config_name.
fn latency_vec(r: &Registry, name: &str, help: &str) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, &["db_config_name"]).expect("valid metric literal");
    r.register(Box::new(h.clone()))
        .expect("each metric is registered once");
    h
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let checkout_wait = Histogram::with_opts(
            HistogramOpts::new(
                "pgdecomp_pool_wait_seconds",
                "Time clients waited for a server connection",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric literal");
        r.register(Box::new(checkout_wait.clone()))
            .expect("registered once");
        let transaction_seconds = latency_vec(
            &r,
            "pgdecomp_transaction_duration_seconds",
            "Time a server connection was held per transaction (or statement outside one)",
        );
        let statement_seconds = latency_vec(
            &r,
            "pgdecomp_statement_duration_seconds",
            "Time from a client's Query or Sync to the server's ReadyForQuery",
        );
        let m = Self {
            client_connections: counter(
                &r,
                "pgdecomp_client_connections_total",
                "Client connections accepted",
            ),
            clients: gauge(&r, "pgdecomp_clients", "Client connections open now"),
            pending_logins: gauge(
                &r,
                "pgdecomp_pending_logins",
                "Connections logging in and waiting on their client now",
            ),
            client_limits: counter_vec(
                &r,
                "pgdecomp_client_limit_total",
                "Clients refused or closed by a configured limit",
                &["limit"],
            ),
            login_delays: counter(
                &r,
                "pgdecomp_login_delays_total",
                "Failed logins whose answer was held back (repeated failures from one address)",
            ),
            login_failures: counter_vec(
                &r,
                "pgdecomp_login_failures_total",
                "Failed client logins",
                &["reason"],
            ),
            server_connect_errors: counter_vec(
                &r,
                "pgdecomp_server_connection_errors_total",
                "Failures to open or keep a server connection",
                &["db_config_name"],
            ),
            statements: counter_vec(
                &r,
                "pgdecomp_statements_total",
                "Statements routed, by target and statement kind",
                &["db_config_name", "kind"],
            ),
            transactions: counter_vec(
                &r,
                "pgdecomp_transactions_total",
                "Server connection checkouts (transactions, or statements outside one)",
                &["db_config_name"],
            ),
            unparsable: counter(
                &r,
                "pgdecomp_unparsable_statements_total",
                "Statements that did not parse (sent to the main primary)",
            ),
            schemas_used: counter_vec(
                &r,
                "gitlab_database_decomposition_gitlab_schemas_used_total",
                "The number of observed schemas dependent on connection (sampled)",
                &["gitlab_schemas", "db_config_name"],
            ),
            cross_join: counter_vec(
                &r,
                "pgdecomp_cross_join_total",
                "Statements joining schemas that may not be joined",
                &["gitlab_schemas"],
            ),
            cross_db_modification: counter_vec(
                &r,
                "pgdecomp_cross_database_modification_total",
                "Transactions writing tables of both databases",
                &["gitlab_schemas"],
            ),
            wrong_schema: counter_vec(
                &r,
                "pgdecomp_wrong_schema_total",
                "Statements run on a target whose allowed schemas exclude theirs",
                &["db_config_name", "gitlab_schemas"],
            ),
            locked_table_write: counter_vec(
                &r,
                "pgdecomp_locked_table_write_total",
                "Writes to tables locked on the target's database (phase 7)",
                &["db_config_name", "gitlab_schema"],
            ),
            shadow_violations: counter_vec(
                &r,
                "pgdecomp_shadow_violations_total",
                "Violations the shadow phase would report",
                &["kind", "mode"],
            ),
            shadow_routes: counter_vec(
                &r,
                "pgdecomp_shadow_routes_total",
                "Targets the shadow phase would choose",
                &["db_config_name"],
            ),
            routed: counter_vec(
                &r,
                "pgdecomp_routes_total",
                "Routing decisions by target and reason",
                &["db_config_name", "reason"],
            ),
            rollout_decisions: rollout_decisions(&r),
            rejected: counter_vec(
                &r,
                "pgdecomp_rejected_statements_total",
                "Statements refused by an enforced rule",
                &["kind"],
            ),
            replica_fallback: counter_vec(
                &r,
                "pgdecomp_replica_fallback_total",
                "Reads sent to a primary because the group has no replica",
                &["db_config_name"],
            ),
            phase: gauge(&r, "pgdecomp_phase", "The active decomposition phase"),
            fleet_phase_revision: gauge(
                &r,
                "pgdecomp_fleet_phase_revision",
                "etcd revision of the phase applied from [fleet] (0: from phase_file)",
            ),
            fleet_connected: gauge(
                &r,
                "pgdecomp_fleet_connected",
                "1 while this instance follows the phase in etcd ([fleet])",
            ),
            reloads: counter_vec(
                &r,
                "pgdecomp_config_reload_total",
                "Configuration reloads by result",
                &["result"],
            ),
            catalog_reads: counter_vec(
                &r,
                "pgdecomp_catalog_reads_total",
                "Reads of the main primary's catalog (partitions, functions, tables) by result",
                &["result"],
            ),
            checkout_wait,
            transaction_seconds,
            statement_seconds,
            pool_servers: gauge_vec(
                &r,
                "pgdecomp_pool_servers",
                "Server connections per pool by state",
                &["db_config_name", "server", "state"],
            ),
            build_info: gauge_vec(&r, "pgdecomp_build_info", "Build information", &["version"]),
            topology: TopologyMetrics::new(&r),
            cutover: CutoverMetrics::new(&r),
            registry: r,
            targets: Vec::new(),
        };
        let mut m = m;
        m.targets = crate::route::Target::ALL
            .iter()
            .map(|t| {
                let l = t.label();
                TargetMetrics {
                    transactions: m.transactions.with_label_values(&[l]),
                    transaction_seconds: m.transaction_seconds.with_label_values(&[l]),
                    statement_seconds: m.statement_seconds.with_label_values(&[l]),
                    statements: KINDS.map(|k| m.statements.with_label_values(&[l, k])),
                    routes: REASONS.map(|r| m.routed.with_label_values(&[l, r])),
                    replica_fallback: m.replica_fallback.with_label_values(&[l]),
                }
            })
            .collect();
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// The pre-resolved counters of `target`.
    pub fn target(&self, target: crate::route::Target) -> &TargetMetrics {
        &self.targets[target as usize]
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
