//! Pipeline's last step (… → pool → **server**): which proxy-named statements one server
//! connection has prepared, bounded with least-recently-used eviction (PgBouncer's
//! `max_prepared_statements`), so a long-lived connection shared by many clients cannot grow
//! without limit.

use std::collections::HashMap;
use std::sync::Arc;

/// Server-side statement names prepared on one connection, with a use clock for eviction.
#[derive(Debug)]
pub struct ServerStatements {
    names: HashMap<Arc<str>, u64>,
    clock: u64,
    cap: usize,
}

impl Default for ServerStatements {
    fn default() -> Self {
        Self::with_cap(DEFAULT_CAP)
    }
}

/// PgBouncer's default for `max_prepared_statements`.
pub const DEFAULT_CAP: usize = 200;

impl ServerStatements {
    pub fn with_cap(cap: usize) -> Self {
        Self {
            names: HashMap::new(),
            clock: 0,
            cap: cap.max(1),
        }
    }

    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
    }

    /// True when `name` is prepared; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.clock += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared. Returns the least recently used name the caller must close
    /// on the server first when the set is full.
    pub fn insert(&mut self, name: Arc<str>) -> Option<Arc<str>> {
        self.clock += 1;
        if let Some(t) = self.names.get_mut(&name) {
            *t = self.clock;
            return None;
        }
        let evicted = if self.names.len() >= self.cap {
            self.oldest().inspect(|old| {
                self.names.remove(old);
            })
        } else {
            None
        };
        self.names.insert(name, self.clock);
        evicted
    }

    fn oldest(&self) -> Option<Arc<str>> {
        self.names
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.names.remove(name).is_some()
    }

    /// The server forgot everything (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.names.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut s = ServerStatements::with_cap(2);
        assert_eq!(s.insert("a".into()), None);
        assert_eq!(s.insert("b".into()), None);
        assert!(s.touch("a"));
        assert_eq!(s.insert("c".into()).as_deref(), Some("b"));
        assert!(
            s.names.contains_key("a") && s.names.contains_key("c") && !s.names.contains_key("b")
        );
        assert_eq!(s.insert("c".into()), None);
        assert_eq!(s.len(), 2);
    }
}
