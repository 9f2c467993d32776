//! Session → relay: the timers that run while a client holds a server connection
//! (`query_timeout`, `idle_transaction_timeout`). Which one runs is a pure choice made here; the
//! relay loop polls the one timer it was given.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::Sleep;

use crate::protocol::backend::PgError;

/// What an attached session is waiting on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// A request was sent and its ReadyForQuery has not come back (COPY FROM STDIN excluded:
    /// then the server waits for the client).
    Server,
    /// Inside a transaction, nothing outstanding: the client holds the server and sends nothing.
    ClientInTransaction,
    Nothing,
}

/// The limit a running timer enforces, with its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Query(Duration),
    IdleTransaction(Duration),
}

impl Expiry {
    pub fn after(self) -> Duration {
        match self {
            Self::Query(d) | Self::IdleTransaction(d) => d,
        }
    }

    /// The counter label (`pgdecomp_client_limit_total{limit}`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Query(_) => "query_timeout",
            Self::IdleTransaction(_) => "idle_transaction_timeout",
        }
    }

    /// What the client is told. A query timeout keeps the session (the error answers the
    /// request, as statement_timeout's does); an idle transaction ends it, as PostgreSQL's
    /// idle_in_transaction_session_timeout does.
    pub fn error(self) -> PgError {
        let secs = self.after().as_secs_f64();
        match self {
            Self::Query(_) => PgError::error(
                "57014",
                format!(
                    "canceling statement due to query_timeout: no answer from the server within \
                     {secs}s; the transaction was aborted and the server connection closed"
                ),
            ),
            Self::IdleTransaction(_) => PgError::fatal(
                "25P03",
                format!(
                    "terminating connection due to idle_transaction_timeout: idle in a \
                     transaction for {secs}s"
                ),
            ),
        }
    }
}

/// The relay loop's one timer: which limit it enforces now. Re-armed only when that changes
/// (or a request is answered), so a steady stream of requests resets no timer.
pub struct Watch {
    timed: bool,
    limits: (Duration, Duration),
    armed: Option<Expiry>,
}

impl Watch {
    /// `limits`: query_timeout, idle_transaction_timeout.
    pub fn new(timed: bool, limits: (Duration, Duration)) -> Self {
        Self {
            timed,
            limits,
            armed: None,
        }
    }

    /// The timer to pin for the attachment: none unless a limit is on.
    pub fn sleep(&self) -> Option<Sleep> {
        self.timed.then(|| tokio::time::sleep(Duration::ZERO))
    }

    /// Re-arms for what the session waits on; the timer to poll, if one runs. `waiting` is
    /// asked only when a limit is on: it counts the replies outstanding, on every relay turn.
    pub fn update<'a>(
        &mut self,
        waiting: impl FnOnce() -> Waiting,
        mut timer: Pin<&'a mut Option<Sleep>>,
    ) -> Option<Pin<&'a mut Sleep>> {
        if !self.timed {
            return None;
        }
        let want = timer_for(waiting(), self.limits.0, self.limits.1);
        if want != self.armed {
            if let (Some(e), Some(t)) = (want, timer.as_mut().as_pin_mut()) {
                t.reset(tokio::time::Instant::now() + e.after());
            }
            self.armed = want;
        }
        self.armed.and(timer.as_pin_mut())
    }

    pub fn armed(&self) -> Option<Expiry> {
        self.armed
    }

    pub fn answered(&mut self) {
        self.armed = None;
    }
}

/// The timer that should run now; zero durations are off.
pub fn timer_for(waiting: Waiting, query: Duration, idle_transaction: Duration) -> Option<Expiry> {
    match waiting {
        Waiting::Server if !query.is_zero() => Some(Expiry::Query(query)),
        Waiting::ClientInTransaction if !idle_transaction.is_zero() => {
            Some(Expiry::IdleTransaction(idle_transaction))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(5);
    const OFF: Duration = Duration::ZERO;

    #[test]
    fn each_wait_has_its_own_limit() {
        assert_eq!(timer_for(Waiting::Server, S, OFF), Some(Expiry::Query(S)));
        assert_eq!(
            timer_for(Waiting::ClientInTransaction, OFF, S),
            Some(Expiry::IdleTransaction(S))
        );
        assert_eq!(timer_for(Waiting::Server, OFF, S), None);
        assert_eq!(timer_for(Waiting::ClientInTransaction, S, OFF), None);
        assert_eq!(timer_for(Waiting::Nothing, S, S), None);
    }

    #[test]
    fn errors_follow_postgres_codes() {
        let q = Expiry::Query(S).error();
        assert_eq!((q.code, q.severity), ("57014", "ERROR"));
        let i = Expiry::IdleTransaction(S).error();
        assert_eq!((i.code, i.severity), ("25P03", "FATAL"));
        assert!(i.message.contains("idle_transaction_timeout"));
    }
}
