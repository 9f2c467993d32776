//! Health checks beside the pipeline: the WAL archive backlog of each primary, which the
//! throttle (`throttle.rs`) holds migration traffic on. Asked after the main check, on the same
//! connection; failures leave the value unknown and never fail the health check.

use std::collections::HashMap;

use crate::server::{ServerConn, ServerError};

/// WAL segments waiting for the archiver (GitLab throttled migrations on this). A query of its
/// own: it needs superuser or pg_monitor, and a login without either must not fail the check.
const ARCHIVE_SQL: &str =
    "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'";

/// The backlog of WAL segments waiting for the archiver on a primary.
pub async fn archive_ready(conn: &mut ServerConn) -> Result<u64, ServerError> {
    let row = conn.query_row(ARCHIVE_SQL).await?;
    let text = row.first().cloned().flatten().unwrap_or_default();
    text.parse().map_err(|_| ServerError::Query {
        addr: conn.addr.clone(),
        code: "XX000".into(),
        message: format!("archive status count is not a number: {text:?}"),
    })
}

/// Kept between rounds: each server's last backlog and last error.
#[derive(Default)]
pub struct ArchiveNotes {
    last: HashMap<String, Option<u64>>,
    /// Logged once per change, not once per round.
    errors: HashMap<String, String>,
}

impl ArchiveNotes {
    /// The backlog to publish for `addr`: the last one when the round's health was carried
    /// over from the previous round, else what this round read (`None` when not asked).
    pub fn settle(
        &mut self,
        addr: &str,
        carried: bool,
        read: Option<Result<u64, String>>,
    ) -> Option<u64> {
        let ready = if carried {
            self.last.get(addr).copied().flatten()
        } else {
            self.note(addr, read)
        };
        self.last.insert(addr.to_string(), ready);
        ready
    }

    /// An error (typically a login without pg_monitor) is logged once per change and leaves
    /// the backlog unknown.
    fn note(&mut self, addr: &str, read: Option<Result<u64, String>>) -> Option<u64> {
        match read? {
            Ok(n) => {
                if self.errors.remove(addr).is_some() {
                    tracing::info!(
                        server = addr,
                        ready = n,
                        "WAL archive status readable again"
                    );
                }
                Some(n)
            }
            Err(e) => {
                if self.errors.get(addr) != Some(&e) {
                    tracing::warn!(server = addr, error = %e, "cannot read the WAL archive status (needs superuser or pg_monitor); archive throttling is off for this server");
                    self.errors.insert(addr.to_string(), e);
                }
                None
            }
        }
    }

    /// Forgets servers that left the topology.
    pub fn retain(&mut self, known: &[String]) {
        self.last.retain(|a, _| known.contains(a));
        self.errors.retain(|a, _| known.contains(a));
    }
}
