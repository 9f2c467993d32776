//! Named prepared statements in transaction pooling: client statement names are mapped to
//! proxy-wide server names, and a statement is prepared on demand on whichever server connection
//! runs the client's next transaction (as PgBouncer >= 1.21 does).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::scan::Tracker;
use crate::protocol::frame::Frame;
use crate::protocol::frontend::{
    bind_statement, parse_view, target_of, write_bind_renamed, write_parse, write_target,
};

/// A statement as the server knows it.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    pub sql: Arc<str>,
    pub param_types: Bytes,
}

/// SQL text and raw parameter types of a Parse.
type StatementKey = (Arc<str>, Bytes);

/// Proxy-wide map from (SQL, parameter types) to one server statement name, so clients that
/// prepare the same text share one server-side statement per connection.
#[derive(Default)]
pub struct StatementRegistry {
    names: Mutex<HashMap<StatementKey, Arc<Statement>>>,
    next: AtomicU64,
}

impl StatementRegistry {
    pub fn intern(&self, sql: &str, param_types: &[u8]) -> Arc<Statement> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let key = (Arc::<str>::from(sql), Bytes::copy_from_slice(param_types));
        if let Some(s) = names.get(&key) {
            return s.clone();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stmt = Arc::new(Statement {
            server_name: Arc::from(format!("pgdecomp_{id}")),
            sql: key.0.clone(),
            param_types: key.1.clone(),
        });
        names.insert(key, stmt.clone());
        stmt
    }

    pub fn len(&self) -> usize {
        self.names.lock().map(|n| n.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The portal name the proxy closes in place of a client's Close of a named statement: closing
/// a portal that does not exist is not an error, and yields the CloseComplete the client expects
/// in exactly the right place while the shared server statement stays prepared.
const NOOP_PORTAL: &str = "pgdecomp_noop";

/// Writes client frame `f` to `out` for the server, renaming statements and injecting Parse /
/// Close as needed. Returns false for messages the caller must handle itself.
pub fn forward_frame(
    f: &Frame,
    stmts: &mut HashMap<Box<[u8]>, Arc<Statement>>,
    registry: &StatementRegistry,
    prepared: &mut HashSet<Arc<str>>,
    tracker: &mut Tracker,
    out: &mut BytesMut,
) {
    match f.tag {
        b'P' => match parse_view(f) {
            Some(p) if !p.name.is_empty() => {
                let stmt = registry.intern(p.sql, p.param_types);
                if prepared.remove(&stmt.server_name) {
                    // The client re-prepares: re-plan on the server rather than fail with
                    // "already exists".
                    write_target(b'C', b'S', &stmt.server_name, out);
                    tracker.injected_close();
                }
                write_parse(&stmt.server_name, &stmt.sql, &stmt.param_types, out);
                prepared.insert(stmt.server_name.clone());
                tracker.parse_sent(Some(stmt.server_name.clone()), false);
                stmts.insert(p.name.into(), stmt);
            }
            _ => {
                out.extend_from_slice(&f.raw);
                tracker.parse_sent(None, false);
            }
        },
        b'B' => match bind_statement(f).and_then(|n| stmts.get(n)) {
            Some(stmt) => {
                ensure_prepared(stmt, prepared, tracker, out);
                if write_bind_renamed(f, &stmt.server_name, out).is_none() {
                    out.extend_from_slice(&f.raw);
                }
                tracker.client_message();
            }
            None => pass(f, tracker, out),
        },
        b'D' | b'C' => match target_of(f) {
            Some((b'S', name)) if !name.is_empty() => {
                if f.tag == b'C' {
                    stmts.remove(name);
                    write_target(b'C', b'P', NOOP_PORTAL, out);
                    tracker.client_message();
                } else if let Some(stmt) = stmts.get(name) {
                    ensure_prepared(stmt, prepared, tracker, out);
                    write_target(b'D', b'S', &stmt.server_name, out);
                    tracker.client_message();
                } else {
                    pass(f, tracker, out);
                }
            }
            _ => pass(f, tracker, out),
        },
        b'S' => {
            out.extend_from_slice(&f.raw);
            tracker.sync();
        }
        b'Q' | b'F' => {
            out.extend_from_slice(&f.raw);
            tracker.close(super::scan::SegmentOwner::Client);
        }
        b'c' | b'f' => {
            out.extend_from_slice(&f.raw);
            tracker.copy_done();
        }
        // CopyData and Flush belong to requests already counted.
        b'd' | b'H' => out.extend_from_slice(&f.raw),
        _ => pass(f, tracker, out),
    }
}

fn pass(f: &Frame, tracker: &mut Tracker, out: &mut BytesMut) {
    out.extend_from_slice(&f.raw);
    tracker.client_message();
}

fn ensure_prepared(
    stmt: &Statement,
    prepared: &mut HashSet<Arc<str>>,
    tracker: &mut Tracker,
    out: &mut BytesMut,
) {
    if !prepared.contains(&stmt.server_name) {
        write_parse(&stmt.server_name, &stmt.sql, &stmt.param_types, out);
        prepared.insert(stmt.server_name.clone());
        tracker.parse_sent(Some(stmt.server_name.clone()), true);
    }
}
