//! Session, at login: a client's place under max_client_conn, max_user_connections and
//! max_db_connections. The place is taken in one step when the login is checked (before the
//! password exchange, so a refused client costs no authentication) and held by a guard until
//! the client registers, so logins racing each other cannot pass a limit together, and a
//! login that fails or times out gives its place back.

use std::sync::atomic::Ordering;

use super::SessionError;
use crate::config::Snapshot;
use crate::protocol::backend::PgError;
use crate::shared::Shared;

/// A place held for a logging-in client; dropping it frees the place.
pub struct Seat<'a> {
    shared: &'a Shared,
    user: String,
    database: String,
    held: bool,
}

impl<'a> Seat<'a> {
    /// Takes a place, or refuses with the limit that is full (53300).
    pub fn take(
        shared: &'a Shared,
        snap: &Snapshot,
        user: &str,
        database: &str,
    ) -> Result<Self, SessionError> {
        let max = snap.max_client_conn;
        let clients = &shared.clients;
        if clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            let error = PgError::fatal("53300", "no more connections allowed (max_client_conn)");
            return Err(SessionError::Limit {
                limit: "max_client_conn",
                error,
            });
        }
        let limits = (snap.max_user_connections, snap.max_db_connections);
        if let Err(limit) = shared.control.reserve(user, database, limits) {
            clients.fetch_sub(1, Ordering::AcqRel);
            let whose = match limit {
                "max_user_connections" => format!("user \"{user}\""),
                _ => format!("database \"{database}\""),
            };
            let message = format!("too many connections for {whose} ({limit})");
            return Err(SessionError::Limit {
                limit,
                error: PgError::fatal("53300", message),
            });
        }
        Ok(Self {
            shared,
            user: user.to_string(),
            database: database.to_string(),
            held: true,
        })
    }

    /// The client registered: its place is now freed by its unregistration and its client
    /// count guard.
    pub fn keep(mut self) {
        self.held = false;
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        if self.held {
            self.shared.clients.fetch_sub(1, Ordering::AcqRel);
            self.shared.control.release(&self.user, &self.database);
        }
    }
}
