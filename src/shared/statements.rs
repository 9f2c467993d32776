//! Proxy-wide state beside the pipeline (client → framing → session → classify → route → pool
//! → server): the registry that interns prepared statements across clients. One server-side
//! name per distinct (SQL, parameter types), so every client that prepares the same text shares
//! it; a client's own statements (`session::prepared`) hold them.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// A statement as the server knows it: one per distinct (SQL, parameter types), shared by
/// every client that prepares the same text.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    pub sql: Arc<str>,
    pub param_types: Bytes,
}

/// Proxy-wide interning of statements. Entries are weak: a statement no client holds any more
/// is forgotten, so the registry is bounded by what clients hold.
#[derive(Default)]
pub struct StatementRegistry {
    buckets: Mutex<HashMap<u64, Vec<Weak<Statement>>>>,
    next: AtomicU64,
    inserts: AtomicU64,
}

/// Inserts between sweeps of dead entries.
const SWEEP_EVERY: u64 = 1024;

fn key_hash(sql: &str, param_types: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    sql.hash(&mut h);
    param_types.hash(&mut h);
    h.finish()
}

impl StatementRegistry {
    /// The shared statement for this text and parameter types; the lookup allocates nothing.
    pub fn intern(&self, sql: &str, param_types: &[u8]) -> Arc<Statement> {
        let hash = key_hash(sql, param_types);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(hash).or_default();
        for weak in bucket.iter() {
            if let Some(s) = weak.upgrade() {
                if &*s.sql == sql && s.param_types == param_types {
                    return s;
                }
            }
        }
        bucket.retain(|w| w.strong_count() > 0);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stmt = Arc::new(Statement {
            server_name: Arc::from(format!("pgdecomp_{id}")),
            sql: Arc::from(sql),
            param_types: Bytes::copy_from_slice(param_types),
        });
        bucket.push(Arc::downgrade(&stmt));
        if self.inserts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            buckets.retain(|_, b| {
                b.retain(|w| w.strong_count() > 0);
                !b.is_empty()
            });
        }
        stmt
    }

    /// Statements some client still holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_shares_and_forgets() {
        let r = StatementRegistry::default();
        let a = r.intern("select 1", &[0, 0]);
        let b = r.intern("select 1", &[0, 0]);
        assert!(Arc::ptr_eq(&a, &b));
        let c = r.intern("select 1", &[0, 1, 0, 0, 0, 23]);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(r.len(), 2);
        drop((a, b, c));
        assert_eq!(r.len(), 0);
        let d = r.intern("select 1", &[0, 0]);
        assert_ne!(&*d.server_name, "pgdecomp_0");
    }
}
