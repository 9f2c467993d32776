//! Pipeline step 2 (client → framing → **classify** → route → pool → server): SQL text to
//! statement kind, tables and gitlab_schemas. Pure: no I/O, no globals, no metrics.

mod types;

pub use types::*;

use std::sync::Arc;

/// Errors loading the dictionary or schema rules.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("dictionary line {line}: {message}")]
    Dictionary { line: usize, message: String },
    #[error("schema rules: {0}")]
    Rules(String),
}

/// Table → gitlab_schema dictionary (GitLab's `gitlab_schemas.yml` plus deleted tables).
#[derive(Debug, Default)]
pub struct Dictionary {}

impl Dictionary {
    /// The dictionary shipped in `config/gitlab_schemas.tsv`.
    pub fn gitlab_default() -> Self {
        Self {}
    }

    /// Parses `table<TAB>gitlab_schema` lines; `#` comments and blank lines are ignored.
    pub fn from_tsv(_text: &str) -> Result<Self, ClassifyError> {
        Ok(Self {})
    }
}

/// Which schemas may be joined / share transactions (GitLab's `allow_cross_joins`).
#[derive(Debug, Default)]
pub struct SchemaRules {}

impl SchemaRules {
    /// GitLab's 2022 rule: a cross-join iff both gitlab_ci and gitlab_main are touched.
    pub fn gitlab_2022() -> Self {
        Self {}
    }

    pub fn from_toml(_text: &str) -> Result<Self, ClassifyError> {
        Ok(Self {})
    }
}

/// Immutable classification context built from config; cheap to share.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub dictionary: Arc<Dictionary>,
    pub rules: Arc<SchemaRules>,
    pub write_functions: Arc<[String]>,
}

impl Classifier {
    pub fn new(
        dictionary: Dictionary,
        rules: SchemaRules,
        extra_write_functions: &[String],
    ) -> Self {
        Self {
            dictionary: Arc::new(dictionary),
            rules: Arc::new(rules),
            write_functions: extra_write_functions.to_vec().into(),
        }
    }

    pub fn gitlab_default() -> Self {
        Self::new(
            Dictionary::gitlab_default(),
            SchemaRules::gitlab_2022(),
            &[],
        )
    }

    /// Classifies one query string (possibly several statements). Never panics.
    pub fn classify(&self, sql: &str) -> Classification {
        let _ = sql;
        Classification {
            kind: StatementKind::Unknown,
            statements: vec![StatementKind::Unknown],
            tables: vec![],
            schemas: vec![],
            cross_join: CrossJoin {
                allowed: true,
                schemas: vec![],
            },
            error: Some("classifier not built yet".into()),
        }
    }
}

/// Bounded, sharded cache of classifications keyed by statement text.
pub struct ClassifyCache {
    classifier: Classifier,
}

impl ClassifyCache {
    pub fn new(classifier: Classifier, _capacity: usize) -> Self {
        Self { classifier }
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Returns the cached classification of `sql`, classifying and inserting on a miss.
    pub fn get(&self, sql: &str) -> Arc<Classification> {
        Arc::new(self.classifier.classify(sql))
    }
}
