//! One client connection end to end: handshake and login, then the relay loop that takes each
//! transaction through classify → route → pool → server and forwards the replies raw.

mod auth;
mod cancel;
pub mod control;
mod handshake;
mod io;
mod local;
mod machine;
mod params;
mod placement;
mod prepared;
mod pump;
mod record;
mod relay;
mod scan;
#[cfg(test)]
mod scan_tests;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

pub use cancel::CancelRegistry;
pub use io::ClientIo;
pub use params::ClientParams;
pub use prepared::StatementRegistry;

use crate::auth::AuthError;
use crate::classify::ClassifyCache;
use crate::config::Snapshot;
use crate::metrics::Metrics;
use crate::pool::{CheckoutError, Pools};
use crate::protocol::backend::PgError;
use crate::protocol::frame::FrameError;
use crate::protocol::startup::StartupError;

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
}

/// One violation as SHOW VIOLATIONS lists it.
#[derive(Clone, Debug)]
pub struct RecentViolation {
    pub at: std::time::SystemTime,
    pub client: u64,
    pub kind: &'static str,
    pub mode: &'static str,
    pub message: String,
    pub sql: String,
}

const RECENT_VIOLATIONS: usize = 100;

impl Shared {
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        let pools = ArcSwap::new(Pools::new(snapshot.pool.clone()));
        let cache = ArcSwap::from_pointee(ClassifyCache::new(
            snapshot.classifier.clone(),
            snapshot.cache_size,
        ));
        let metrics = Metrics::new();
        metrics.phase.set(i64::from(snapshot.phase.number()));
        let topology =
            crate::topology::Topology::new(crate::topology::checker::static_view(&snapshot));
        Arc::new(Self {
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
        })
    }
}

impl Shared {
    /// Re-reads the config file and swaps the new snapshot in atomically. On any error the old
    /// snapshot stays live. Sessions pick the new one up at their next transaction; open
    /// transactions finish on the snapshot they started with.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        let path = self.config.load().source.clone();
        match crate::config::load(&path) {
            Ok(new) => {
                let phase = new.phase.number();
                if self.config.load().pool != new.pool {
                    tracing::info!("pool settings changed: new pools; the old ones drain");
                    self.pools.store(Pools::new(new.pool.clone()));
                }
                let generation = self.cache.load().generation() + 1;
                self.cache.store(Arc::new(ClassifyCache::with_generation(
                    new.classifier.clone(),
                    new.cache_size,
                    generation,
                )));
                // Servers added or removed take effect now, not at the next health round.
                let view = crate::topology::checker::rebase(&new, &self.topology.view());
                self.config.store(Arc::new(new));
                self.topology.publish(view);
                self.metrics.phase.set(i64::from(phase));
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(config = %path.display(), phase, "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(config = %path.display(), error = %e, "reload failed; the previous configuration stays live");
                Err(e)
            }
        }
    }

    /// Keeps label cardinality bounded: past a cap, new `undefined_<table>` values become
    /// `undefined_other` (each unknown table would otherwise be a new time series).
    pub fn bounded_label(&self, label: String) -> String {
        if !label.contains("undefined_") {
            return label;
        }
        let mut seen = self
            .undefined_labels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.contains(&label) {
            return label;
        }
        if seen.len() < record::UNDEFINED_LABEL_CAP {
            seen.insert(label.clone());
            return label;
        }
        let mut parts: Vec<&str> = label
            .split(',')
            .map(|p| {
                if p.starts_with("undefined_") {
                    "undefined_other"
                } else {
                    p
                }
            })
            .collect();
        parts.dedup();
        parts.join(",")
    }

    /// True at most once per 10 s for each violation kind and schema set.
    pub fn should_log_violation(&self, kind: &'static str, schemas: &str) -> bool {
        let mut logged = self
            .violation_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let full = logged.len() >= 10_000;
        match logged.entry((kind, schemas.to_string())) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if now.duration_since(*e.get()) < std::time::Duration::from_secs(10) {
                    return false;
                }
                e.insert(now);
                true
            }
            std::collections::hash_map::Entry::Vacant(e) if !full => {
                e.insert(now);
                true
            }
            std::collections::hash_map::Entry::Vacant(_) => false,
        }
    }

    pub fn remember_violation(&self, client: u64, v: &crate::route::Violation, sql: &str) {
        let mut recent = self
            .recent_violations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_VIOLATIONS {
            recent.pop_front();
        }
        recent.push_back(RecentViolation {
            at: std::time::SystemTime::now(),
            client,
            kind: v.kind.label(),
            mode: v.mode.label(),
            message: v.message.clone(),
            sql: record::truncate(sql).to_string(),
        });
    }

    /// Refreshes the gauges read at scrape time and renders every metric.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.clients.set(self.clients.load(Ordering::Relaxed) as i64);
        for (key, pool) in self.pools.load().all() {
            let st = pool.status();
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

/// Everything that can end or interrupt a session, tagged by side.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("client sent a malformed message: {0}")]
    Frame(#[from] FrameError),
    #[error("client startup: {0}")]
    Startup(#[from] StartupError),
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Fatal(PgError),
    #[error("{0}")]
    Checkout(#[from] CheckoutError),
    #[error("client disconnected")]
    Hangup,
}

impl SessionError {
    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io(_) | Self::Hangup => "disconnect",
            Self::Frame(_) | Self::Startup(_) => "protocol",
            Self::Auth(AuthError::Failed(_)) => "password",
            Self::Auth(_) => "auth",
            Self::Fatal(e) if e.code == "3D000" => "database",
            Self::Fatal(e) if e.code == "53300" => "max_client_conn",
            Self::Fatal(_) => "refused",
            Self::Checkout(_) => "server",
        }
    }

    /// The error to send the client before closing, if any.
    pub fn to_pg(&self) -> Option<PgError> {
        match self {
            Self::Io(_) | Self::Hangup => None,
            Self::Frame(e) => Some(PgError::fatal("08P01", e.to_string())),
            Self::Startup(e) => Some(PgError::fatal("08P01", e.to_string())),
            Self::Auth(AuthError::Failed(_)) => Some(PgError::fatal("28P01", self.to_string())),
            Self::Auth(e) => Some(PgError::fatal("28000", e.to_string())),
            Self::Fatal(e) => Some(e.clone()),
            Self::Checkout(e) => Some(PgError::fatal("08006", e.to_string())),
        }
    }
}

/// Decrements the client count when a session ends, however it ends.
struct ClientCount<'a>(&'a AtomicUsize);

impl Drop for ClientCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted client connection until it ends. Never panics on client input.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    shared.clients.fetch_add(1, Ordering::Relaxed);
    shared.metrics.client_connections.inc();
    let _count = ClientCount(&shared.clients);
    let _ = stream.set_nodelay(true);
    let snapshot = shared.config.load_full();
    let mut io = io::ClientIo::new(stream, snapshot.max_message_size);
    let login = tokio::time::timeout(
        snapshot.auth_timeout,
        handshake::handshake(&mut io, &shared, &snapshot, peer),
    )
    .await;
    let client = match login {
        Ok(Ok(Some(handshake::Accepted::Client(login)))) => relay::Client::new(io, peer, *login),
        Ok(Ok(Some(handshake::Accepted::Admin { user }))) => {
            tracing::info!(%peer, %user, "admin console session");
            if let Err(e) = crate::admin::serve(&mut io, &shared).await {
                tracing::info!(%peer, error = %e, "admin session ended");
            }
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return fail(&mut io, peer, e, &shared).await,
        Err(_) => {
            let e = SessionError::Fatal(PgError::fatal("08P01", "authentication timeout"));
            return fail(&mut io, peer, e, &shared).await;
        }
    };
    let id = client.id;
    let key = client.cancel_key;
    let mut client = client;
    let entry = shared
        .control
        .register(id, &client.user, &client.database, peer);
    let result = tokio::select! {
        r = relay::run(&mut client, &shared, &entry) => r,
        _ = entry.kill.notified() => Err(SessionError::Fatal(PgError::fatal("57P01", "terminated by the administrator (KILL)"))),
    };
    shared.control.unregister(id);
    match result {
        Ok(()) => tracing::debug!(client = id, %peer, "client disconnected"),
        Err(e) => {
            tracing::warn!(client = id, %peer, error = %e, "client session ended by an error");
            if let Some(pg) = e.to_pg() {
                pg.encode(&mut client.io.wbuf);
                let _ = client.io.flush().await;
            }
        }
    }
    shared.cancels.unregister(key);
}

async fn fail(io: &mut io::ClientIo, peer: SocketAddr, e: SessionError, shared: &Shared) {
    tracing::warn!(%peer, error = %e, "login failed");
    shared
        .metrics
        .login_failures
        .with_label_values(&[e.reason()])
        .inc();
    if let Some(pg) = e.to_pg() {
        pg.encode(&mut io.wbuf);
        let _ = io.flush().await;
    }
}
