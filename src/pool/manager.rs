//! deadpool `Manager` for server connections: create = connect + login; recycle = the checks
//! that keep a broken, expired or stale connection from reaching a client.

use std::time::{Duration, Instant};

use deadpool::managed::{Metrics, RecycleError, RecycleResult};

use super::stash::Stash;
use crate::server::{ServerConn, ServerError, ServerSpec};

/// Timeouts and limits that govern one pool's connections.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnLimits {
    pub connect_timeout: Duration,
    pub server_lifetime: Duration,
    /// A connection idle longer than this is pinged before reuse.
    pub check_delay: Duration,
}

pub struct ServerManager {
    pub spec: ServerSpec,
    pub limits: ConnLimits,
    /// For write targets: refuse a server in recovery. The health checker's view can be a round
    /// old; this check on every new connection keeps writes off a node just demoted.
    pub require_primary: bool,
    /// Connections released last, checked out before deadpool is asked (`stash.rs`).
    pub stash: Stash,
}

/// What a pooled connection needs before a client may have it.
pub enum Readiness {
    Ready,
    /// Idle past server_check_delay: a round trip must show the server still answers.
    Ping,
    /// Broken, expired or closed by the server.
    Discard(&'static str),
}

impl deadpool::managed::Manager for ServerManager {
    /// Boxed: the pool moves its objects in and out of its queue on every checkout, and a
    /// pointer moves for less than the connection's state.
    type Type = Box<ServerConn>;
    type Error = ServerError;

    async fn create(&self) -> Result<Box<ServerConn>, ServerError> {
        // Boxed: a login's state (TLS, SCRAM) is large and rare; inline, every client's task
        // would carry room for it while it waits for a pooled connection or sits idle.
        Box::pin(self.open()).await.map(Box::new)
    }

    async fn recycle(&self, conn: &mut Box<ServerConn>, _: &Metrics) -> RecycleResult<ServerError> {
        self.check(conn).await
    }

    /// A connection left the pool (closed, expired, or failed to open): there is room for
    /// another, so a client waiting in the hand-off queue asks deadpool again.
    fn detach(&self, _: &mut Box<ServerConn>) {
        self.stash.queue.retry_one();
    }
}

impl ServerManager {
    async fn open(&self) -> Result<ServerConn, ServerError> {
        let mut conn = ServerConn::connect(&self.spec, self.limits.connect_timeout).await;
        if self.require_primary {
            if let Ok(c) = &mut conn {
                let check = tokio::time::timeout(
                    self.limits.connect_timeout,
                    c.query_row("SELECT pg_is_in_recovery()"),
                );
                conn = match check.await {
                    Ok(Ok(row)) if row.first().cloned().flatten().as_deref() == Some("f") => conn,
                    Ok(Ok(_)) => Err(ServerError::InRecovery(self.spec.addr.clone())),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(ServerError::ConnectTimeout(self.spec.addr.clone())),
                };
            }
        }
        if let Ok(c) = &mut conn {
            // Ready now, after its login: a client's wait for it ends here (see `transact`).
            c.last_used = Instant::now();
            c.retire_at = c.last_used.checked_add(self.limits.server_lifetime);
        }
        match &conn {
            Ok(c) => {
                tracing::debug!(server = %c.addr, pid = c.backend_pid, "server connection opened")
            }
            Err(e) => tracing::warn!(error = %e, "server connection failed"),
        }
        conn
    }

    /// The checks of a checkout that need no round trip, against the clock read `now`.
    pub fn readiness(&self, conn: &mut ServerConn, now: Instant) -> Readiness {
        if let Some(why) = Self::unusable(conn, now) {
            return Readiness::Discard(why);
        }
        if now.saturating_duration_since(conn.last_used) > self.limits.check_delay {
            return Readiness::Ping;
        }
        Readiness::Ready
    }

    /// [`Self::readiness`] of a connection released a moment ago (a hand-off to a waiting
    /// client): its release time stands in for the clock, so it was idle for no time and needs
    /// no ping.
    pub fn readiness_released(&self, conn: &mut ServerConn) -> Readiness {
        match Self::unusable(conn, conn.last_used) {
            Some(why) => Readiness::Discard(why),
            None => Readiness::Ready,
        }
    }

    /// Why a connection must be closed rather than used, if it must.
    fn unusable(conn: &mut ServerConn, now: Instant) -> Option<&'static str> {
        if conn.broken || conn.in_use {
            return Some("connection marked broken");
        }
        if conn.retire_at.is_some_and(|at| now > at) {
            return Some("server_lifetime reached");
        }
        if conn.is_closed_or_dirty() {
            return Some("server closed the connection");
        }
        None
    }

    async fn check(&self, conn: &mut ServerConn) -> RecycleResult<ServerError> {
        // One clock read per checkout serves all three comparisons.
        let now = Instant::now();
        match self.readiness(conn, now) {
            Readiness::Ready => {}
            Readiness::Discard(why) => return Err(RecycleError::message(why)),
            Readiness::Ping => {
                // Boxed with its timer: rare (only after check_delay idle), and inline it would
                // widen every checkout's state, which each client task carries.
                let (limit, c) = (self.limits.connect_timeout, &mut *conn);
                let check =
                    Box::pin(async move { tokio::time::timeout(limit, c.simple_query(";")).await });
                match check.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(RecycleError::Backend(e)),
                    Err(_) => return Err(RecycleError::message("server check timed out")),
                }
            }
        }
        conn.last_used = now;
        Ok(())
    }
}
