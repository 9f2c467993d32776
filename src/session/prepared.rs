//! Session state (client → framing → **session** → classify → route → …): the one owner of a
//! client's prepared statements. Client names map to proxy-wide server names, so a statement
//! is prepared on demand on whichever server connection runs the client's next transaction
//! (as PgBouncer >= 1.21 does); each statement carries its classification, so executing it
//! costs no parse and no cache lookup.

use std::collections::HashMap;
use std::sync::Arc;

use crate::classify::{Classification, ClassifyCache};
// The proxy-wide statement registry lives with the rest of the shared state.
pub use crate::shared::{Statement, StatementRegistry};

/// One statement of one client, with its classification under the dictionary generation it
/// was made with.
#[derive(Clone, Debug)]
pub struct ClientStatement {
    pub stmt: Arc<Statement>,
    pub class: Arc<Classification>,
    generation: u64,
}

impl ClientStatement {
    /// `class` is the classification of `stmt.sql` under `cache`.
    pub fn new(stmt: Arc<Statement>, class: Arc<Classification>, cache: &ClassifyCache) -> Self {
        Self {
            class,
            generation: cache.generation(),
            stmt,
        }
    }

    /// The classification, redone once after a reload replaced the dictionary.
    pub fn class(&mut self, cache: &ClassifyCache) -> &Arc<Classification> {
        if self.generation != cache.generation() {
            self.class = cache.get(&self.stmt.sql);
            self.generation = cache.generation();
        }
        &self.class
    }
}

/// The unnamed statement: text kept in reused buffers, so drivers that Parse before every
/// execution cost no allocation per statement.
#[derive(Debug, Default)]
pub struct Unnamed {
    pub sql: String,
    pub param_types: Vec<u8>,
    pub class: Option<Arc<Classification>>,
    generation: u64,
}

impl Unnamed {
    /// Records a Parse of the unnamed statement, with `class` the classification of `sql`.
    pub fn set(
        &mut self,
        sql: &str,
        param_types: &[u8],
        class: Arc<Classification>,
        cache: &ClassifyCache,
    ) {
        self.sql.clear();
        self.sql.push_str(sql);
        self.param_types.clear();
        self.param_types.extend_from_slice(param_types);
        self.class = Some(class);
        self.generation = cache.generation();
    }

    pub fn class(&mut self, cache: &ClassifyCache) -> Option<&Arc<Classification>> {
        if self.class.is_some() && self.generation != cache.generation() {
            self.class = Some(cache.get(&self.sql));
            self.generation = cache.generation();
        }
        self.class.as_ref()
    }
}

/// Why a statement could not be kept.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany {
    pub limit: usize,
}

/// A client's statements: named ones bounded by `cap`, and the unnamed one.
#[derive(Debug)]
pub struct ClientStatements {
    named: HashMap<Box<[u8]>, ClientStatement>,
    pub unnamed: Unnamed,
    cap: usize,
}

impl ClientStatements {
    pub fn new(cap: usize) -> Self {
        Self {
            named: HashMap::new(),
            unnamed: Unnamed::default(),
            cap: cap.max(1),
        }
    }

    /// Records a named statement; replacing one keeps the count. Past the cap the statement is
    /// refused: the client must close some (silently dropping one would break it later).
    pub fn insert(&mut self, name: &[u8], s: ClientStatement) -> Result<(), TooMany> {
        if let Some(slot) = self.named.get_mut(name) {
            *slot = s;
            return Ok(());
        }
        if self.named.len() >= self.cap {
            return Err(TooMany { limit: self.cap });
        }
        self.named.insert(name.into(), s);
        Ok(())
    }

    pub fn get(&self, name: &[u8]) -> Option<&ClientStatement> {
        self.named.get(name)
    }

    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut ClientStatement> {
        self.named.get_mut(name)
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<ClientStatement> {
        self.named.remove(name)
    }

    /// DISCARD ALL / DEALLOCATE ALL.
    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed = Unnamed::default();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.named.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_statements_are_bounded() {
        let cache = ClassifyCache::new(crate::classify::Classifier::gitlab_default(), 10);
        let r = StatementRegistry::default();
        let mut s = ClientStatements::new(2);
        let st = |sql: &str| ClientStatement::new(r.intern(sql, &[0, 0]), cache.get(sql), &cache);
        s.insert(b"a", st("select 1")).unwrap();
        s.insert(b"b", st("select 2")).unwrap();
        s.insert(b"a", st("select 3")).unwrap();
        assert_eq!(s.insert(b"c", st("select 4")), Err(TooMany { limit: 2 }));
        s.remove(b"a");
        s.insert(b"c", st("select 4")).unwrap();
        assert_eq!(s.len(), 2);
    }
}
