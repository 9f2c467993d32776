//! Health checks beside the pipeline: each round learns the members (config or Patroni), asks
//! every server for its recovery state and WAL position over a kept connection, and computes
//! replay lag against the primary its cluster follows. Produces a new `View`; publishing and
//! metrics are the caller's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::archive::{archive_ready, ArchiveNotes};
use super::lsn::Lsn;
use super::patroni;
use super::view::{ClusterId, ClusterView, Health, Node, Probe, Role, View};
use super::HealthSettings;
use crate::config::{Cluster, Snapshot};
use crate::server::{ServerConn, ServerError, ServerSpec};

/// One query answers everything a round needs from a server. `now()` minus the last replayed
/// commit's timestamp is GitLab's lag-in-time measure; it is NULL before any replay. A primary
/// reports two positions: insert (at least every commit acknowledged so far, for
/// read-your-writes) and flush (what replicas can have, for lag: the insert position runs a page
/// header ahead on an idle server).
const CHECK_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END, \
     EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END";

const TIMED_OUT: &str = "check timed out";

/// What one probe learned about a server.
struct Outcome {
    addr: String,
    /// The connection, when it is still good for the next round.
    conn: Option<ServerConn>,
    health: Health,
    /// `None` when not asked: not a primary, or the check itself failed.
    archive: Option<Result<u64, String>>,
}

/// Kept between rounds: check connections and Patroni's last answers.
pub struct Checker {
    conns: HashMap<String, ServerConn>,
    http: reqwest::Client,
    /// Members from the last Patroni answer, kept while no endpoint answers.
    discovered: [Option<Vec<Node>>; 2],
    /// Errors logged once per change, not once per round.
    last_error: HashMap<String, String>,
    /// Health from the previous round, so one slow check does not take a server out.
    previous: HashMap<String, Health>,
    /// WAL archive backlogs and their errors from the previous round.
    archive: ArchiveNotes,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

/// The members a static cluster config names.
pub fn static_nodes(c: &Cluster) -> Vec<Node> {
    c.primary
        .iter()
        .map(|p| Node::new(p.clone(), Role::Leader))
        .chain(
            c.replicas
                .iter()
                .map(|r| Node::new(r.clone(), Role::Replica)),
        )
        .collect()
}

/// The view from the config alone, before (or without) health checks.
pub fn static_view(snap: &Snapshot) -> View {
    View {
        clusters: [
            ClusterView {
                nodes: static_nodes(&snap.main),
                discovered: false,
            },
            ClusterView {
                nodes: static_nodes(&snap.ci),
                discovered: false,
            },
        ],
    }
}

/// After a reload: the new config's static members at once, keeping what the last round
/// learned about servers that stay (Patroni-discovered clusters are kept as they are).
pub fn rebase(snap: &Snapshot, prev: &View) -> View {
    let mut next = static_view(snap);
    for id in ClusterId::ALL {
        let old = prev.cluster(id);
        let c = &mut next.clusters[id.index()];
        let patroni = match id {
            ClusterId::Main => !snap.main.patroni.is_empty(),
            ClusterId::Ci => !snap.ci.patroni.is_empty(),
        };
        if patroni && old.discovered {
            *c = old.clone();
            continue;
        }
        for n in &mut c.nodes {
            if let Some(o) = old
                .nodes
                .iter()
                .find(|o| o.addr == n.addr && o.role == n.role)
            {
                n.health = o.health.clone();
                n.lagging = o.lagging;
                n.archive_ready = o.archive_ready;
            }
        }
    }
    next
}

impl Checker {
    pub fn new() -> Self {
        Self {
            conns: HashMap::new(),
            http: reqwest::Client::new(),
            discovered: [None, None],
            last_error: HashMap::new(),
            previous: HashMap::new(),
            archive: ArchiveNotes::default(),
        }
    }

    /// One round: members, probes, lag. Never fails; what went wrong is in the view.
    pub async fn round(&mut self, snap: &Snapshot) -> View {
        let h = &snap.health;
        let mut view = View::default();
        for id in ClusterId::ALL {
            let cluster = match id {
                ClusterId::Main => &snap.main,
                ClusterId::Ci => &snap.ci,
            };
            view.clusters[id.index()] = self.members(id, cluster, h).await;
        }
        let Some(login) = &h.login else {
            return view;
        };
        let mut probes = Vec::new();
        for c in &view.clusters {
            for n in &c.nodes {
                probes.push(n.addr.clone());
            }
        }
        probes.sort();
        probes.dedup();
        let mut jobs = Vec::new();
        for addr in probes {
            let conn = self.conns.remove(&addr);
            let spec = ServerSpec {
                addr: addr.clone(),
                ..login.clone()
            };
            jobs.push(tokio::spawn(probe(spec, conn, h.statement_timeout)));
        }
        let mut results = HashMap::new();
        for job in jobs {
            let Ok(out) = job.await else {
                continue;
            };
            if let Some(c) = out.conn {
                self.conns.insert(out.addr.clone(), c);
            }
            let settled = self.settle(&out.addr, out.health, out.archive);
            self.note(&out.addr, &settled.0);
            results.insert(out.addr, settled);
        }
        for c in &mut view.clusters {
            for n in &mut c.nodes {
                if let Some((health, archive)) = results.get(&n.addr) {
                    n.health = health.clone();
                    n.archive_ready = *archive;
                }
            }
        }
        apply_lag(&mut view, h);
        // Forget connections to servers that left the topology.
        let known: Vec<String> = view
            .clusters
            .iter()
            .flat_map(|c| c.nodes.iter().map(|n| n.addr.clone()))
            .collect();
        self.conns.retain(|a, _| known.contains(a));
        self.previous.retain(|a, _| known.contains(a));
        self.archive.retain(&known);
        view
    }

    /// A single timeout on a busy machine keeps the last result (archive backlog included);
    /// two in a row count.
    fn settle(
        &mut self,
        addr: &str,
        health: Health,
        archive: Option<Result<u64, String>>,
    ) -> (Health, Option<u64>) {
        let (health, carried) = match (health, self.previous.get(addr).cloned()) {
            (Health::Down(e), Some(Health::Up(p))) if e == TIMED_OUT => {
                self.previous.insert(addr.to_string(), Health::Down(e));
                (Health::Up(p), true)
            }
            (h, _) => {
                self.previous.insert(addr.to_string(), h.clone());
                (h, false)
            }
        };
        (health, self.archive.settle(addr, carried, archive))
    }

    async fn members(&mut self, id: ClusterId, c: &Cluster, h: &HealthSettings) -> ClusterView {
        if c.patroni.is_empty() {
            return ClusterView {
                nodes: static_nodes(c),
                discovered: false,
            };
        }
        let timeout = h.statement_timeout.max(Duration::from_millis(500));
        let slot = &mut self.discovered[id.index()];
        match patroni::discover(&self.http, &c.patroni, timeout).await {
            Ok(nodes) => {
                self.last_error.remove(id.label());
                *slot = Some(nodes);
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.get(id.label()) != Some(&msg) {
                    tracing::warn!(cluster = id.label(), error = %msg, "Patroni discovery failed; keeping the last known members");
                    self.last_error.insert(id.label().to_string(), msg);
                }
            }
        }
        ClusterView {
            nodes: slot.clone().unwrap_or_else(|| static_nodes(c)),
            discovered: slot.is_some(),
        }
    }

    fn note(&mut self, addr: &str, health: &Health) {
        match health {
            Health::Down(e) => {
                if self.last_error.get(addr) != Some(e) {
                    tracing::warn!(server = addr, error = %e, "health check failed");
                    self.last_error.insert(addr.to_string(), e.clone());
                }
            }
            _ => {
                if self.last_error.remove(addr).is_some() {
                    tracing::info!(server = addr, "health check succeeds again");
                }
            }
        }
    }
}

/// What a check that failed with `e` says of the server.
pub(super) fn failed(e: &ServerError) -> Health {
    match e {
        // The checker's own login is wrong: that says nothing about the server.
        ServerError::Auth { .. } => Health::Unknown,
        ServerError::Rejected { code, .. } if code.starts_with("28") => Health::Unknown,
        // Cancelled by the check's own statement_timeout: as slow as a check that timed out
        // here, so it gets the same one-time grace on a busy machine (see `settle`).
        ServerError::Query { code, .. } if code == "57014" => Health::Down(TIMED_OUT.into()),
        _ => Health::Down(e.to_string()),
    }
}

/// Checks one server, reusing its connection, which is returned when it is still good.
async fn probe(spec: ServerSpec, conn: Option<ServerConn>, timeout: Duration) -> Outcome {
    let addr = spec.addr.clone();
    let result = tokio::time::timeout(timeout * 2, async {
        let mut conn = match conn {
            Some(c) => c,
            None => {
                let mut c = ServerConn::connect(&spec, timeout).await?;
                let ms = timeout.as_millis().max(1);
                c.simple_query(&format!("SET statement_timeout = {ms}"))
                    .await?;
                c
            }
        };
        let sent = Instant::now();
        let row = conn.query_row(CHECK_SQL).await?;
        let primary = row.first().cloned().flatten().as_deref() == Some("f");
        let archive = match primary {
            true => Some(archive_ready(&mut conn).await),
            false => None,
        };
        Ok::<_, ServerError>((conn, sent, row, archive))
    })
    .await;
    let (conn, health, archive) = match result {
        Err(_) => (None, Health::Down(TIMED_OUT.into()), None),
        Ok(Err(e)) => {
            let health = failed(&e);
            if matches!(health, Health::Unknown) {
                tracing::warn!(server = %addr, error = %e, "health check cannot log in; check [health] user/password");
            }
            (None, health, None)
        }
        Ok(Ok((conn, sent, row, archive))) => {
            // A refused query leaves the connection in step; any other failure does not.
            let keep = !matches!(&archive, Some(Err(e)) if !matches!(e, ServerError::Query { .. }));
            let archive = archive.map(|r| r.map_err(|e| e.to_string()));
            (
                keep.then_some(conn),
                Health::Up(read_probe(&row, sent)),
                archive,
            )
        }
    };
    Outcome {
        addr,
        conn,
        health,
        archive,
    }
}

/// The check query's row as a probe; lag is filled in by `apply_lag`.
fn read_probe(row: &[Option<String>], sent: Instant) -> Probe {
    let get = |i: usize| row.get(i).cloned().flatten();
    let in_recovery = get(0).as_deref() == Some("t");
    let lsn_at = |i| {
        get(i)
            .and_then(|l| l.parse::<Lsn>().ok())
            .unwrap_or_default()
    };
    let replay_age = get(2).and_then(|s| s.parse::<f64>().ok());
    Probe {
        in_recovery,
        lsn: lsn_at(1),
        flushed: lsn_at(3),
        lag_bytes: 0,
        // Filled in by `apply_lag` once the primary's position is known.
        lag_seconds: replay_age.unwrap_or(f64::INFINITY),
        sent,
    }
}

/// Lag of every standby against the primary whose WAL it replays, and GitLab's rule: a server
/// lags when it is behind by more than `max_lag_bytes` AND `max_lag_seconds`.
pub fn apply_lag(view: &mut View, h: &HealthSettings) {
    let reference: Vec<Option<Lsn>> = ClusterId::ALL
        .iter()
        .map(|&id| {
            let src = view.wal_source(id);
            view.cluster(src).writer_probe().map(|p| p.flushed)
        })
        .collect();
    for id in ClusterId::ALL {
        let primary = reference[id.index()];
        for n in &mut view.clusters[id.index()].nodes {
            let Health::Up(p) = &mut n.health else {
                n.lagging = false;
                continue;
            };
            if !p.in_recovery {
                p.lag_bytes = 0;
                p.lag_seconds = 0.0;
                n.lagging = false;
                continue;
            }
            match primary {
                Some(primary) => {
                    p.lag_bytes = primary.ahead_of(p.lsn);
                    if p.lag_bytes == 0 {
                        p.lag_seconds = 0.0;
                    }
                }
                // Without a primary to compare with, only the time measure is known.
                None => p.lag_bytes = 0,
            }
            n.lagging =
                p.lag_bytes > h.max_lag_bytes && p.lag_seconds > h.max_lag_seconds.as_secs_f64();
        }
    }
}
