//! The cutover's server operations: find main's primary and the CI leader (Patroni or the
//! static config), read WAL positions, promote the CI cluster and check that its leader
//! writes. Each call is one bounded round trip; the coordinator decides what to do with it.

use std::time::Duration;

use super::preflight::Member;
use crate::config::{Cluster, Snapshot};
use crate::server::{ServerConn, ServerSpec};
use crate::topology::patroni::discover;
use crate::topology::{Lsn, Role};

/// The servers a cutover works on, as found now.
#[derive(Clone, Debug, Default)]
pub struct Servers {
    pub main_primary: String,
    /// The CI cluster's leader: its standby leader before the promotion.
    pub ci_leader: String,
    /// Every Patroni member of both clusters (empty for a static topology).
    pub members: Vec<Member>,
}

/// How the cutover reaches the servers.
pub struct Ops {
    login: ServerSpec,
    http: reqwest::Client,
    timeout: Duration,
    ci_patroni: Vec<String>,
    main: Cluster,
    ci: Cluster,
}

impl Ops {
    pub fn new(snap: &Snapshot) -> Result<Ops, String> {
        let login = snap.health.login.clone().ok_or(
            "no login for the servers: set [health] user/password (or [server]) so the cutover can read WAL positions",
        )?;
        Ok(Ops {
            login: ServerSpec {
                tls: snap.server_tls.clone(),
                ..login
            },
            http: reqwest::Client::new(),
            timeout: snap.health.statement_timeout.max(Duration::from_secs(2)),
            ci_patroni: snap.ci.patroni.clone(),
            main: snap.main.clone(),
            ci: snap.ci.clone(),
        })
    }

    /// main's primary and ci's leader, and Patroni's members.
    pub async fn servers(&self) -> Result<Servers, String> {
        let mut members = Vec::new();
        let main_primary = self.leader("main", &self.main, &mut members).await?;
        let ci_leader = self.leader("ci", &self.ci, &mut members).await?;
        Ok(Servers {
            main_primary,
            ci_leader,
            members,
        })
    }

    /// Every configured Patroni endpoint whose member is not running: `/health` answers 200
    /// only for a running PostgreSQL. A crashed member soon drops out of `/cluster`, so the
    /// member list alone would not show it.
    pub async fn down_endpoints(&self) -> Vec<String> {
        let mut down = Vec::new();
        for (name, c) in [("main", &self.main), ("ci", &self.ci)] {
            for ep in &c.patroni {
                let url = format!("http://{ep}/health");
                let answer = self.http.get(&url).timeout(self.timeout).send().await;
                match answer {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => down.push(format!(
                        "{ep} (cluster {name}): /health answered {}",
                        r.status()
                    )),
                    Err(e) => down.push(format!("{ep} (cluster {name}): {e}")),
                }
            }
        }
        down
    }

    async fn leader(
        &self,
        name: &'static str,
        c: &Cluster,
        members: &mut Vec<Member>,
    ) -> Result<String, String> {
        if c.patroni.is_empty() {
            return c
                .primary
                .clone()
                .ok_or_else(|| format!("cluster {name} names no primary"));
        }
        let nodes = discover(&self.http, &c.patroni, self.timeout)
            .await
            .map_err(|e| format!("Patroni of cluster {name}: {e}"))?;
        for n in &nodes {
            if let Some(p) = &n.patroni {
                members.push(Member {
                    cluster: name,
                    name: p.name.clone(),
                    role: p.role.clone(),
                    state: p.state.clone(),
                });
            }
        }
        nodes
            .iter()
            .find(|n| n.role == Role::Leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| format!("Patroni reports no leader in cluster {name}"))
    }

    async fn one_value(&self, addr: &str, sql: &str) -> Result<Option<String>, String> {
        let spec = ServerSpec {
            addr: addr.to_string(),
            ..self.login.clone()
        };
        let work = async {
            let mut conn = ServerConn::connect(&spec, self.timeout).await?;
            let row = conn.query_row(sql).await?;
            Ok::<_, crate::server::ServerError>(row.into_iter().next().flatten())
        };
        match tokio::time::timeout(self.timeout * 2, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{addr}: {e}")),
            Err(_) => Err(format!("{addr}: no answer within {:?}", self.timeout * 2)),
        }
    }

    /// main's current WAL write position: every acknowledged commit is at or before it.
    pub async fn main_lsn(&self, addr: &str) -> Result<Lsn, String> {
        let v = self.one_value(addr, "SELECT pg_current_wal_lsn()").await?;
        parse(addr, v)
    }

    /// How far a standby has replayed; `None` when the server is not in recovery.
    pub async fn replayed(&self, addr: &str) -> Result<Option<Lsn>, String> {
        let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() END";
        match self.one_value(addr, sql).await? {
            None => Ok(None),
            v => parse(addr, v).map(Some),
        }
    }

    pub async fn writable(&self, addr: &str) -> Result<bool, String> {
        let v = self.one_value(addr, "SELECT pg_is_in_recovery()").await?;
        Ok(v.as_deref() == Some("f"))
    }

    /// Asks for the promotion: Patroni's standby cluster loses its `standby_cluster` section;
    /// a static CI leader is promoted by PostgreSQL itself. Repeating it is harmless.
    pub async fn promote(&self, ci_leader: &str) -> Result<(), String> {
        if self.ci_patroni.is_empty() {
            if self.writable(ci_leader).await? {
                return Ok(());
            }
            return self
                .one_value(ci_leader, "SELECT pg_promote(true, 60)")
                .await
                .map(drop);
        }
        let mut errors = Vec::new();
        for ep in &self.ci_patroni {
            let url = format!("http://{ep}/config");
            let sent = self
                .http
                .patch(&url)
                .header("content-type", "application/json")
                .body(r#"{"standby_cluster": null}"#)
                .timeout(self.timeout)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => errors.push(format!("{url}: status {}", r.status())),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(format!(
            "no CI Patroni endpoint took the promotion: {}",
            errors.join("; ")
        ))
    }
}

fn parse(addr: &str, v: Option<String>) -> Result<Lsn, String> {
    let v = v.ok_or_else(|| format!("{addr}: no WAL position (NULL)"))?;
    v.parse().map_err(|e| format!("{addr}: {e}"))
}
