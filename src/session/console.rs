//! Session step for the admin console (client → framing → **session** → admin): reads a
//! logged-in admin's simple queries and answers each with `admin::execute`, as PgBouncer's
//! console does.

use super::{ClientIo, SessionError};
use crate::admin::{execute, Reply};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frontend::query_sql;
use crate::shared::Shared;

/// Serves a logged-in admin until it disconnects. Only the simple query protocol is spoken,
/// as with PgBouncer's console.
pub async fn serve(io: &mut ClientIo, shared: &Shared) -> Result<(), SessionError> {
    loop {
        io.flush().await?;
        let Some(f) = io.read_frame().await? else {
            return Ok(());
        };
        match f.tag {
            b'X' => return Ok(()),
            b'Q' => {
                let sql = query_sql(&f).unwrap_or_default();
                for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    match execute(stmt, shared).await {
                        Ok(Reply::Rows(t)) => t.encode(&mut io.wbuf),
                        Ok(Reply::Done(tag)) => backend::command_complete(tag, &mut io.wbuf),
                        Err(e) => {
                            e.encode(&mut io.wbuf);
                            break;
                        }
                    }
                }
                if sql.trim().is_empty() {
                    backend::empty(b'I', &mut io.wbuf);
                }
                backend::ready_for_query(b'I', &mut io.wbuf);
            }
            b'S' => backend::ready_for_query(b'I', &mut io.wbuf),
            b'H' => {}
            _ => PgError::error(
                "0A000",
                "the admin console speaks only the simple query protocol",
            )
            .encode(&mut io.wbuf),
        }
    }
}
