//! Wires the running proxy: the client listener, pool maintenance and signal handling.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Snapshot;
use crate::session;
use crate::shared::Shared;

/// A started proxy: its bound addresses and a handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accepting: watch::Sender<bool>,
}

impl Running {
    pub fn shutdown(&self) {
        let _ = self.accepting.send(false);
        let _ = self.shutdown.send(true);
    }

    /// SIGTERM / SHUTDOWN: stops accepting (the listener closes, so new connections are
    /// refused), tells every client to leave at its next idle point, then waits until none is
    /// left or `bound` passes. Returns how many clients were still connected.
    pub async fn drain(&self, bound: Duration) -> usize {
        let _ = self.accepting.send(false);
        self.shared.control.drain();
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let left = self
                .shared
                .clients
                .load(std::sync::atomic::Ordering::Relaxed);
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A listener on `addr`, the `setting` that names it; a failure says which address it was.
async fn bind(addr: std::net::SocketAddr, setting: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{setting} = \"{addr}\": {e}")))
}

/// Binds the listener and spawns the accept loop and maintenance tasks.
pub async fn start(snapshot: Snapshot) -> std::io::Result<Running> {
    let listener = bind(snapshot.listen, "listen").await?;
    let addr = listener.local_addr()?;
    let metrics_listener = match snapshot.metrics_listen {
        Some(a) => Some(bind(a, "metrics_listen").await?),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let shared = Shared::new(snapshot);
    let (tx, rx) = watch::channel(false);
    if let Some(l) = metrics_listener {
        let s = shared.clone();
        let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || s.render_metrics());
        tokio::spawn(crate::metrics::serve(l, render));
    }
    // With [fleet], the phase comes from etcd before the first client is accepted.
    crate::fleet::start(shared.clone(), rx.clone()).await;
    let (accepting, accepting_rx) = watch::channel(true);
    tokio::spawn(accept_loop(listener, shared.clone(), accepting_rx));
    tokio::spawn(maintenance(shared.clone(), rx.clone()));
    tokio::spawn(expire_waiters(shared.clone(), rx.clone()));
    tokio::spawn(crate::shared::catalog::run(shared.clone(), rx.clone()));
    let s = shared.clone();
    tokio::spawn(async move {
        let record = |prev: &_, next: &_| s.metrics.topology.record(prev, next);
        crate::topology::watch::run(&s.topology, &s.config, &s.pools, record, rx).await
    });
    tracing::info!(%addr, metrics = ?metrics_addr, "pgdecomp listening");
    Ok(Running {
        addr,
        metrics_addr,
        shared,
        shutdown: tx,
        accepting,
    })
}

/// Accepts until `accepting` turns false (drain or shutdown); the listener closes with it.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut accepting: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    tokio::spawn(session::serve(stream, peer, shared.clone()));
                }
                Err(e) => {
                    // Usually EMFILE: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            _ = accepting.changed() => return,
        }
    }
}

/// query_wait_timeout's check for clients waiting in a pool's hand-off queue, to a quarter
/// second (PgBouncer's janitor checks it as often). Its own task: a maintenance pass can wait
/// on new connections for up to connect_timeout.
async fn expire_waiters(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = sweep.tick() => shared.pools.load().expire_waiters(std::time::Instant::now()),
            _ = stop.changed() => return,
        }
    }
}

async fn maintenance(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seen = FileStamps::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let snap = shared.config.load_full();
                let pools = shared.pools.load_full();
                // Servers gone from the config and the topology get no new clients: close their pools.
                let view = shared.topology.view();
                let addrs = [&snap.main, &snap.ci]
                    .into_iter()
                    .flat_map(|c| c.primary.iter().chain(c.replicas.iter()))
                    .chain(view.clusters.iter().flat_map(|c| c.nodes.iter().map(|n| &n.addr)))
                    .cloned()
                    .collect::<Vec<_>>();
                pools.retain(|key| addrs.contains(&key.spec.addr));
                pools.maintain().await;
                if snap.watch_files && seen.changed(&snap.watched) {
                    tracing::info!("config files changed on disk; reloading");
                    // A failed reload is logged and counted; the old config keeps serving.
                    let _ = shared.reload();
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// Modification times of the watched files, to notice edits without an inotify dependency.
#[derive(Default)]
struct FileStamps(Vec<(std::path::PathBuf, Option<std::time::SystemTime>)>);

impl FileStamps {
    /// True when any file's mtime differs from the last call (not on the first call).
    fn changed(&mut self, files: &[std::path::PathBuf]) -> bool {
        let now: Vec<_> = files
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    std::fs::metadata(f).and_then(|m| m.modified()).ok(),
                )
            })
            .collect();
        let changed = !self.0.is_empty() && self.0 != now;
        self.0 = now;
        changed
    }
}
