//! Proxy-wide state beside the pipeline (client → framing → session → classify → route → pool
//! → server): `Shared`, what every session, the admin console and the background tasks of one
//! running proxy see — the config snapshot, pools, classification cache, topology, metrics and
//! the registries (clients, cancel keys, prepared statements).

pub mod cancel;
pub mod catalog;
pub mod control;
pub mod hold;
pub mod login_rate;
pub mod logins;
mod reload;
pub mod signal;
mod statements;
mod violations;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

pub use cancel::CancelRegistry;
pub use statements::{Statement, StatementRegistry};
pub use violations::{truncate, RecentViolation, UNDEFINED_LABEL_CAP};

use crate::classify::ClassifyCache;
use crate::config::Snapshot;
use crate::metrics::Metrics;
use crate::pool::Pools;

/// State shared by every session of one running proxy.
pub struct Shared {
    pub config: ArcSwap<Snapshot>,
    /// Replaced on reload when pool settings change; the old pools drain as sessions let go.
    pub pools: ArcSwap<Pools>,
    /// Classifications by statement text; replaced with the dictionary on reload.
    pub cache: ArcSwap<ClassifyCache>,
    pub statements: StatementRegistry,
    pub cancels: CancelRegistry,
    pub clients: AtomicUsize,
    pub next_client_id: AtomicU64,
    pub metrics: Metrics,
    /// Round-robin position for replica choice.
    pub replica_rr: AtomicUsize,
    undefined_labels: Mutex<HashSet<String>>,
    /// When each (violation kind, schemas) was last logged: logs are rate-limited, metrics not.
    violation_logged: Mutex<std::collections::HashMap<(&'static str, String), std::time::Instant>>,
    /// The most recent violations, newest last, for the admin console.
    pub recent_violations: Mutex<VecDeque<RecentViolation>>,
    pub control: control::Control,
    /// Set by SHUTDOWN on the admin console; the process stops when it changes.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Which server plays which role, from the config and the health checker.
    pub topology: crate::topology::Topology,
    /// Connections logging in, and failed logins per address.
    pub logins: logins::Logins,
    pub login_rate: login_rate::LoginRate,
    /// The last catalog read from the main primary (`None` until one succeeds).
    pub catalog: arc_swap::ArcSwapOption<crate::catalog::Catalog>,
    /// Notified by reload: read the catalog again.
    pub catalog_refresh: tokio::sync::Notify,
    /// The phase chosen through etcd (`[fleet]`) and the link's status.
    pub fleet: crate::fleet::FleetState,
    /// The cutover's hold of ci write transactions.
    pub hold: hold::CiHold,
    /// Unix milliseconds of the last violation counted (0: none since start), for the
    /// cutover's preflight.
    pub last_violation_ms: AtomicU64,
}

impl Shared {
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        let pools = ArcSwap::new(Pools::new(snapshot.pool.clone()));
        let cache = ArcSwap::from_pointee(
            ClassifyCache::new(snapshot.classifier.clone(), snapshot.cache_size)
                .with_max_statement(snapshot.max_statement_bytes),
        );
        let metrics = Metrics::new();
        metrics.phase.set(i64::from(snapshot.phase.number()));
        let topology =
            crate::topology::Topology::new(crate::topology::checker::static_view(&snapshot));
        let classifier = snapshot.classifier.clone();
        let shared = Arc::new(Self {
            config: ArcSwap::from_pointee(snapshot),
            pools,
            cache,
            statements: StatementRegistry::default(),
            cancels: CancelRegistry::default(),
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            metrics,
            replica_rr: AtomicUsize::new(0),
            undefined_labels: Mutex::default(),
            violation_logged: Mutex::default(),
            recent_violations: Mutex::default(),
            control: control::Control::default(),
            shutdown: tokio::sync::watch::Sender::new(false),
            topology,
            logins: logins::Logins::default(),
            login_rate: login_rate::LoginRate::default(),
            catalog: arc_swap::ArcSwapOption::empty(),
            catalog_refresh: tokio::sync::Notify::new(),
            fleet: crate::fleet::FleetState::default(),
            hold: hold::CiHold::default(),
            last_violation_ms: AtomicU64::new(0),
        });
        shared.export_violation_series(&classifier);
        shared
    }

    /// Refreshes the gauges read at scrape time and renders every metric.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.clients.set(self.clients.load(Ordering::Relaxed) as i64);
        m.pending_logins.set(self.logins.waiting() as i64);
        m.cutover.held.set(self.hold.waiting() as i64);
        for (key, pool) in self.pools.load().all() {
            let st = crate::pool::Pools::status(&pool);
            let labels = |state| [key.target.label(), key.spec.addr.as_str(), state];
            m.pool_servers
                .with_label_values(&labels("idle"))
                .set(st.available as i64);
            m.pool_servers
                .with_label_values(&labels("active"))
                .set((st.size - st.available) as i64);
            m.pool_servers
                .with_label_values(&labels("waiting_clients"))
                .set(st.waiting as i64);
        }
        m.render()
    }
}
