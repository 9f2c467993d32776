//! The relay's wait between requests (client → framing → **session**): the client's next
//! message, or the end of the session (a drain, an idle limit), or a lull that lets a client
//! that went quiet give back the room its busy period took.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::client::Client;
use super::timeouts::Expiry;
use super::SessionError;
use crate::protocol::backend::PgError;
use crate::protocol::frame::Frame;
use crate::protocol::TxnStatus;

/// What a wait for the client's next message brought.
pub enum Waited {
    Request(Frame),
    /// The client hung up.
    Gone,
    /// Nothing came before the caller's lull timer.
    Lull,
}

/// When the client's current wait began, kept across a lull so that an idle limit counts the
/// whole wait. Read from the clock only while an idle limit is on.
#[derive(Default)]
pub struct WaitStart(Option<Instant>);

/// Waits for the client's next message. Between transactions it may instead end the session:
/// on a drain (SIGTERM, SHUTDOWN) or after client_idle_timeout; inside a transaction whose BEGIN
/// pgdecomp holds, after idle_transaction_timeout.
pub async fn next_request(
    c: &mut Client,
    drain: Pin<&mut impl Future<Output = ()>>,
    lull: Pin<&mut impl Future<Output = ()>>,
    start: &mut WaitStart,
) -> Result<Waited, SessionError> {
    let idle = c.session.status() == TxnStatus::Idle;
    let snap = &c.session.snap;
    let limit = match idle {
        true => snap.client_idle_timeout,
        false => snap.idle_transaction_timeout,
    };
    let limit = Some(limit).filter(|d| !d.is_zero());
    let deadline = limit.map(|after| *start.0.get_or_insert_with(Instant::now) + after);
    let waited = tokio::select! {
        biased;
        _ = drain, if idle => Err(SessionError::Fatal(PgError::fatal(
            "57P01",
            "pgdecomp is shutting down (SIGTERM or SHUTDOWN); connect again to reach another instance",
        ))),
        next = c.io.read_frame() => next.map(|f| f.map_or(Waited::Gone, Waited::Request)),
        // Built only when polled: no timer per request unless a limit is on.
        _ = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        } => Err(idle_limit(idle, limit.unwrap_or_default())),
        _ = lull => Ok(Waited::Lull),
    };
    if !matches!(waited, Ok(Waited::Lull)) {
        start.0 = None;
    }
    waited
}

/// The error that ends a client idle past its limit, outside or inside a transaction.
fn idle_limit(idle: bool, after: Duration) -> SessionError {
    let (limit, error) = match idle {
        true => (
            "client_idle_timeout",
            PgError::fatal("57P05", "terminating connection due to client_idle_timeout"),
        ),
        false => {
            let e = Expiry::IdleTransaction(after);
            (e.label(), e.error())
        }
    };
    SessionError::Limit { limit, error }
}
