//! One client connection end to end: handshake and login, then the relay loop that takes each
//! transaction through classify → route → pool → server and forwards the replies raw.

mod auth;
mod client;
mod console;
mod handshake;
mod idle;
mod io;
mod live;
mod local;
mod machine;
mod outbox;
mod params;
mod placement;
mod prepared;
mod prewarm;
mod pump;
mod record;
mod relay;
mod scan;
#[cfg(test)]
mod scan_tests;
mod seat;
mod segment;
mod spare;
mod throttle;
mod timeouts;
mod wait;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;

pub use io::ClientIo;
/// The session machine's fake PostgreSQL and driver, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub use machine::{fake_pg, harness};
pub use machine::{Ctx, Execution, Observer, Plan, Session};
pub use params::ClientParams;
pub use prepared::StatementRegistry;
// The registries moved to `crate::shared`; re-exported for existing paths.
pub use crate::shared::CancelRegistry;

use crate::auth::AuthError;
use crate::pool::CheckoutError;
use crate::protocol::backend::PgError;
use crate::protocol::frame::FrameError;
use crate::protocol::startup::StartupError;
use crate::shared::Shared;

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
    /// A configured limit refused or closed the client; `limit` names it for metrics.
    #[error("{error}")]
    Limit { limit: &'static str, error: PgError },
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
            Self::Limit { limit, .. } => limit,
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
            Self::Fatal(e) | Self::Limit { error: e, .. } => Some(e.clone()),
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
    // Boxed: what a login needs (the handshake, the console) is freed once the client is in,
    // rather than carried in the task of every idle client.
    let Some((client, _count)) = Box::pin(admit(stream, peer, &shared)).await else {
        return;
    };
    relay_session(client, &shared).await;
}

/// Logs the client in; `None` when it did not get in (or was the admin console, served here).
async fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Option<(Box<client::Client>, ClientCount<'_>)> {
    shared.metrics.client_connections.inc();
    let _ = stream.set_nodelay(true);
    let snapshot = shared.config.load_full();
    let mut io = io::ClientIo::new(stream, snapshot.max_message_size);
    // An eviction is counted by the connection evicted, and only if it had not logged in by
    // then: counting where the oldest is pushed out would count a login that completes in the
    // same instant.
    let (pending, _) = shared.logins.enter(snapshot.max_pending_logins);
    let login = tokio::select! {
        login = tokio::time::timeout(
            snapshot.auth_timeout,
            async {
                login_rate(shared, &snapshot).await?;
                handshake::handshake(&mut io, shared, &snapshot, peer, &pending).await
            },
        ) => login,
        _ = pending.evicted() => {
            shared.metrics.login_failures.with_label_values(&["evicted"]).inc();
            tracing::warn!(%peer, "login abandoned: too many connections logging in (max_pending_logins)");
            let pg = PgError::fatal("53300", "too many connections are logging in (max_pending_logins); this one waited longest");
            pg.encode(&mut io.wbuf);
            io.close_gracefully().await;
            return None;
        }
    };
    drop(pending);
    // Only logged-in clients take max_client_conn slots: a client's was taken with its seat.
    match login {
        Ok(Ok(Some(handshake::Accepted::Client(login, seat)))) => {
            seat.keep();
            let count = ClientCount(&shared.clients);
            // Boxed once per session: the task then carries a pointer, not the client.
            Some((Box::new(client::Client::new(io, peer, *login)), count))
        }
        Ok(Ok(Some(handshake::Accepted::Admin { user }))) => {
            shared.clients.fetch_add(1, Ordering::Relaxed);
            let _count = ClientCount(&shared.clients);
            tracing::info!(%peer, %user, "admin console session");
            if let Err(e) = Box::pin(console::serve(&mut io, shared)).await {
                tracing::info!(%peer, error = %e, "admin session ended");
            }
            None
        }
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            fail(&mut io, peer, e, shared).await;
            None
        }
        Err(_) => {
            let e = SessionError::Fatal(PgError::fatal("08P01", "authentication timeout"));
            fail(&mut io, peer, e, shared).await;
            None
        }
    }
}

/// The logged-in client's life: registered for SHOW CLIENTS and KILL, relayed until it leaves.
async fn relay_session(mut client: Box<client::Client>, shared: &Shared) {
    let rollout = (client.actor.clone(), client.session.route.client_roll);
    let entry = shared.control.register(
        client.id,
        &client.user,
        &client.database,
        client.peer,
        rollout,
    );
    let run = relay::run(&mut client, shared, &entry);
    let result = entry.kill.unless(run).await.unwrap_or_else(|| {
        Err(SessionError::Fatal(PgError::fatal(
            "57P01",
            "terminated by the administrator (KILL)",
        )))
    });
    let (id, peer) = (client.id, client.peer);
    shared.control.unregister(id);
    match result {
        Ok(()) => tracing::debug!(client = id, %peer, "client disconnected"),
        Err(e) => {
            if let SessionError::Limit { limit, .. } = &e {
                shared
                    .metrics
                    .client_limits
                    .with_label_values(&[limit])
                    .inc();
            }
            tracing::warn!(client = id, %peer, error = %e, "client session ended by an error");
            if let Some(pg) = e.to_pg() {
                pg.encode(&mut client.io.wbuf);
                // The client may still be sending (a message over the limit): linger, or the
                // close resets the connection and the error is lost.
                client.io.close_gracefully().await;
            }
        }
    }
    shared.cancels.unregister(client.cancel_key);
}

/// Waits for the login's turn under max_logins_per_second; refuses a login whose turn would
/// come after its auth_timeout.
async fn login_rate(
    shared: &Shared,
    snapshot: &crate::config::Snapshot,
) -> Result<(), SessionError> {
    use crate::shared::login_rate::Admit;
    let rate = snapshot.max_logins_per_second;
    // Half the deadline at most: the login still needs time for its handshake.
    match shared.login_rate.admit(rate, snapshot.auth_timeout / 2) {
        Admit::Now => Ok(()),
        Admit::After(wait) => {
            tokio::time::sleep(wait).await;
            Ok(())
        }
        Admit::Refused => Err(SessionError::Limit {
            limit: "max_logins_per_second",
            error: PgError::fatal(
                "53300",
                format!("too many logins: more than max_logins_per_second ({rate}) for longer than auth_timeout; try again"),
            ),
        }),
    }
}

async fn fail(io: &mut io::ClientIo, peer: SocketAddr, e: SessionError, shared: &Shared) {
    if let SessionError::Limit { limit, .. } = &e {
        shared
            .metrics
            .client_limits
            .with_label_values(&[limit])
            .inc();
    }
    tracing::warn!(%peer, error = %e, "login failed");
    shared
        .metrics
        .login_failures
        .with_label_values(&[e.reason()])
        .inc();
    if let Some(pg) = e.to_pg() {
        pg.encode(&mut io.wbuf);
    }
    io.close_gracefully().await;
}
