//! Pipeline step 2 (client → framing → **classify** → route → pool → server): SQL text to
//! statement kind, tables and gitlab_schemas. Pure: no I/O, no globals, no metrics.
//!
//! `lex` prepares tokens, sqlparser parses (`fallback` recognises what it cannot), `tables` walks each statement
//! (`functions` says which calls need the primary), `kind` names it,
//! `dictionary` maps tables to gitlab_schemas and `rules` judges the combination; `classifier`
//! ties them together, `cache` remembers results and `report` renders them for the CLI.

mod cache;
mod classifier;
mod dictionary;
mod fallback;
mod functions;
mod kind;
mod lex;
mod normalize;
mod report;
mod rules;
mod tables;
mod types;

pub use cache::{ClassifyCache, MAX_STATEMENT_BYTES};
pub use classifier::Classifier;
pub use dictionary::Dictionary;
pub use functions::{FunctionInfo, Functions, Volatility};
pub use normalize::cache_key;
pub use report::{to_json, to_text};
pub use rules::SchemaRules;
pub use types::*;

/// Errors loading the dictionary or schema rules.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("dictionary line {line}: {message}")]
    Dictionary { line: usize, message: String },
    #[error("schema rules: {0}")]
    Rules(String),
}
