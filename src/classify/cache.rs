//! Classify step (client → framing → **classify** → route → pool → server): classifications
//! cached by statement text, so the hot path skips the parser for statements seen before.

use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use super::normalize::cache_key_within;
use super::{Classification, Classifier};

/// Rough bytes a cached classification costs beyond its key: the budget is `capacity` entries of
/// this size plus their text, so a few huge statements cannot blow the memory bound.
const ENTRY_OVERHEAD: u64 = 256;
/// Average statement length the weight budget assumes per entry.
const AVERAGE_KEY: u64 = 256;

/// Bounded, sharded cache of classifications keyed by statement text (literals normalised).
pub struct ClassifyCache {
    classifier: Classifier,
    /// Which dictionary this is: statements classified under an older one are redone.
    generation: u64,
    // quick_cache shards behind per-shard locks: no global lock on the hot path.
    entries: Cache<Box<str>, Arc<Classification>, EntryWeight>,
    /// The statements of multi-statement strings, one classification each.
    each: Cache<Box<str>, Arc<[Arc<Classification>]>, EachWeight>,
    /// Longer statements are parsed from their literal-free key, or not at all.
    max_statement: usize,
}

thread_local! {
    /// Each worker thread's key buffer: a lookup of a statement with literals builds its key
    /// here instead of allocating one per statement.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A key buffer grown past this by a huge statement is dropped rather than kept.
const KEPT_KEY: usize = 16 * 1024;

/// `classify.max_statement_bytes` by default: parsing costs many times the text in tokens.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// Multi-statement strings kept classified statement by statement (they are rare in
/// application traffic: scripts, migrations, psql).
const EACH_CAPACITY: usize = 1000;
/// Their weight budget in bytes: a count alone would let 1,000 keys of up to
/// `max_statement_bytes` each (1 GiB at the default) stay in memory.
const EACH_WEIGHT: u64 = 8 << 20;

#[derive(Clone)]
struct EntryWeight;

impl Weighter<Box<str>, Arc<Classification>> for EntryWeight {
    fn weight(&self, key: &Box<str>, value: &Arc<Classification>) -> u64 {
        key.len() as u64 + ENTRY_OVERHEAD + 32 * value.tables.len() as u64
    }
}

#[derive(Clone)]
struct EachWeight;

impl Weighter<Box<str>, Arc<[Arc<Classification>]>> for EachWeight {
    fn weight(&self, key: &Box<str>, parts: &Arc<[Arc<Classification>]>) -> u64 {
        key.len() as u64 + ENTRY_OVERHEAD * parts.len() as u64
    }
}

impl ClassifyCache {
    /// `capacity` is the number of entries of typical size that fit.
    pub fn new(classifier: Classifier, capacity: usize) -> Self {
        Self::with_generation(classifier, capacity, 0)
    }

    /// A cache for the `generation`-th dictionary of this process (reloads count up).
    pub fn with_generation(classifier: Classifier, capacity: usize, generation: u64) -> Self {
        let capacity = capacity.max(1);
        let weight = capacity as u64 * (ENTRY_OVERHEAD + AVERAGE_KEY);
        Self {
            classifier,
            generation,
            entries: Cache::with_weighter(capacity, weight, EntryWeight),
            each: Cache::with_weighter(EACH_CAPACITY, EACH_WEIGHT, EachWeight),
            max_statement: MAX_STATEMENT_BYTES,
        }
    }

    /// Sets the longest text parsed as it is; see [`ClassifyCache::get`].
    pub fn with_max_statement(mut self, bytes: usize) -> Self {
        self.max_statement = bytes.max(1);
        self
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Returns the cached classification of `sql`, classifying and inserting on a miss. A
    /// statement longer than `max_statement` is classified from its key (literals do not
    /// change where a statement goes, which is why the cache may share them), and is unknown
    /// when even that is too long: the parser's tokens would cost many times the text.
    pub fn get(&self, sql: &str) -> Arc<Classification> {
        let mut buf = KEY.with_borrow_mut(std::mem::take);
        let got = self.get_in(sql, &mut buf);
        if buf.capacity() <= KEPT_KEY {
            KEY.with_borrow_mut(|kept| *kept = buf);
        }
        got
    }

    fn get_in(&self, sql: &str, buf: &mut String) -> Arc<Classification> {
        let Some(key) = cache_key_within(sql, self.max_statement, buf) else {
            return Arc::new(self.classifier.too_long(sql.len(), self.max_statement));
        };
        if let Some(hit) = self.entries.get(key) {
            return hit;
        }
        let text = if sql.len() > self.max_statement {
            key
        } else {
            sql
        };
        let classification = Arc::new(self.classifier.classify(text));
        // A parse error quotes the literal it tripped on: share it only with identical text.
        if classification.error.is_none() || key == sql {
            self.entries
                .insert(Box::from(key), Arc::clone(&classification));
        }
        classification
    }

    /// The statements of `sql` classified one by one when it has several (`whole` is its
    /// classification as one string); `None` for a single statement.
    pub fn each(&self, sql: &str, whole: &Classification) -> Option<Arc<[Arc<Classification>]>> {
        if whole.statements.len() <= 1 {
            return None;
        }
        // `whole` has several statements, so the key fits (see `get`).
        let mut buf = String::new();
        let key = cache_key_within(sql, self.max_statement, &mut buf)?;
        if let Some(hit) = self.each.get(key) {
            return Some(hit);
        }
        let text = if sql.len() > self.max_statement {
            key
        } else {
            sql
        };
        let parts: Arc<[Arc<Classification>]> = self
            .classifier
            .classify_each(text)
            .into_iter()
            .map(Arc::new)
            .collect();
        if whole.error.is_none() {
            self.each.insert(Box::from(key), parts.clone());
        }
        Some(parts)
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_variants_share_an_entry() {
        let cache = ClassifyCache::new(Classifier::gitlab_default(), 100);
        let a = cache.get("SELECT * FROM projects WHERE id = 1");
        let b = cache.get("SELECT * FROM projects WHERE id = 2");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 1);
        assert_eq!(
            *a,
            cache
                .classifier()
                .classify("SELECT * FROM projects WHERE id = 3")
        );
    }

    #[test]
    fn errors_are_not_shared_across_literals() {
        let cache = ClassifyCache::new(Classifier::gitlab_default(), 100);
        let a = cache.get("SELECT 1 FROM t WHERE (x = 'a'");
        let b = cache.get("SELECT 2 FROM t WHERE (x = 'b'");
        assert!(a.error.is_some() && b.error.is_some());
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn multi_statement_strings_split_into_statements() {
        let cache = ClassifyCache::new(Classifier::gitlab_default(), 100);
        let sql = "BEGIN; INSERT INTO ci_builds (id) VALUES (1); SELECT 1 FROM projects; COMMIT";
        let whole = cache.get(sql);
        let each = cache.each(sql, &whole).unwrap();
        assert_eq!(each.len(), 4);
        assert_eq!(each[1].schemas_label(), "gitlab_ci");
        assert_eq!(each[2].schemas_label(), "gitlab_main");
        assert!(cache.each("SELECT 1", &cache.get("SELECT 1")).is_none());
    }

    #[test]
    fn multi_statement_entries_count_their_bytes() {
        let cache = ClassifyCache::new(Classifier::gitlab_default(), 100);
        let sql: String = (0..800)
            .map(|i| format!("SELECT c{i} FROM projects; "))
            .collect();
        let each = cache.each(&sql, &cache.get(&sql)).unwrap();
        assert_eq!(each.len(), 800);
        // Weighed by its text, against a byte budget rather than a count of entries.
        assert!(cache.each.weight() >= sql.trim_end().len() as u64);
        assert_eq!(cache.each.capacity(), EACH_WEIGHT);
        assert!(Arc::ptr_eq(
            &each,
            &cache.each(&sql, &cache.get(&sql)).unwrap()
        ));
    }

    #[test]
    fn stays_bounded() {
        let cache = ClassifyCache::new(Classifier::gitlab_default(), 10);
        for i in 0..200 {
            cache.get(&format!("SELECT * FROM t{i}"));
        }
        assert!(cache.len() <= 20, "{}", cache.len());
    }

    #[test]
    fn long_statements_are_parsed_from_their_key_or_fail_closed() {
        let cache = ClassifyCache::new(Classifier::gitlab_default(), 100).with_max_statement(64);
        let note = "x".repeat(10_000);
        let long = format!("INSERT INTO ci_builds (name) VALUES ('{note}')");
        let short = cache.get(&long);
        assert_eq!(
            *short,
            cache
                .classifier()
                .classify("INSERT INTO ci_builds (name) VALUES ('')")
        );
        assert!(short.error.is_none());
        let dense = format!("SELECT {} FROM ci_builds", "1, ".repeat(100));
        let refused = cache.get(&dense);
        assert_eq!(refused.kind, crate::classify::StatementKind::Unknown);
        let error = refused.error.as_deref().unwrap_or_default();
        assert!(error.contains("max_statement_bytes (64)"), "{error}");
        let backslash = format!("INSERT INTO ci_builds (name) VALUES ('{note}\\')");
        assert!(cache.get(&backslash).error.is_some());
    }
}
