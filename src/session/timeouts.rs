//! Session → relay: the timers that run while a client holds a server connection
//! (`query_timeout`, `idle_transaction_timeout`). Which one runs is a pure choice made here; the
//! relay loop polls the one timer it was given.

use std::time::Duration;

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
