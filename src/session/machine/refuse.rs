//! Session step, attached: refusing an execution. The refused statement never reaches the
//! server; in its place the server itself raises the refusal's error, so the transaction
//! state afterwards (aborted inside a transaction, idle outside) is exactly PostgreSQL's own.
//! Nothing the client prepared is touched: the raise uses a statement name of the proxy's.

use bytes::BytesMut;

use super::Attachment;
use crate::protocol::frontend::{
    write_bind_of, write_execute_unnamed, write_parse, write_query, write_target,
};
use crate::route::PgError;

/// The proxy's statement that raises a refusal; closed and re-parsed for each one.
const REFUSE_STATEMENT: &str = "pgdecomp_refuse";

/// SQL that makes the server raise `e`.
pub fn raise_sql(e: &PgError) -> String {
    let lit = |s: &str| {
        format!(
            "'{}'",
            s.replace('\'', "''").replace("$pgdecomp$", "$ pgdecomp$")
        )
    };
    let hint = e
        .hint
        .map(|h| format!(", HINT = {}", lit(h)))
        .unwrap_or_default();
    format!(
        "DO $pgdecomp$ BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {}{hint}; END $pgdecomp$",
        e.sqlstate,
        lit(&e.message)
    )
}

impl Attachment {
    /// A refused simple Query: the raise is the query, answered with the error and
    /// ReadyForQuery like the original would have been.
    pub(super) fn refuse_query(&mut self, e: &PgError, out: &mut BytesMut) {
        write_query(&raise_sql(e), out);
        self.tracker.close(super::SegmentOwner::Client);
        // A simple query replaces the server's unnamed statement.
        self.unnamed_here = false;
    }

    /// A refused extended execution: Close/Parse/Bind of the proxy's own statement (their
    /// replies are dropped) and an Execute whose error the client gets. The caller then
    /// skips the client's messages until Sync, as the server does after an error.
    pub(super) fn refuse_extended(&mut self, e: &PgError, out: &mut BytesMut) {
        write_target(b'C', b'S', REFUSE_STATEMENT, out);
        self.tracker.injected_close();
        write_parse(REFUSE_STATEMENT, &raise_sql(e), &[0, 0], out);
        self.tracker.parse_sent(None, true);
        write_bind_of(REFUSE_STATEMENT, out);
        self.tracker.injected_bind();
        write_execute_unnamed(out);
        self.tracker.client_message();
    }
}

/// An error of the proxy's own in route's shape, so it can be raised the same way.
pub fn own_error(sqlstate: &'static str, message: String) -> PgError {
    PgError {
        sqlstate,
        message,
        hint: None,
    }
}
