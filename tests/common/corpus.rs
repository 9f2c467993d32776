//! The classification corpus (`tests/fixtures/classify_corpus.toml`), shared by the corpus, CLI
//! and property tests and the classify benchmark.

#![allow(dead_code)]

use serde::Deserialize;

/// One statement with what `classify` must say about it.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub sql: String,
    pub kind: String,
    pub tables: Vec<String>,
    pub gitlab_schemas: Vec<String>,
    /// Absent means "allowed unless both gitlab_main and gitlab_ci are touched".
    pub cross_join: Option<bool>,
    #[serde(default)]
    pub error: bool,
    /// Kind of each statement, when the case checks them.
    pub statements: Option<Vec<String>>,
}

impl Case {
    pub fn cross_join_allowed(&self) -> bool {
        self.cross_join.unwrap_or_else(|| {
            !(self.gitlab_schemas.iter().any(|s| s == "gitlab_main")
                && self.gitlab_schemas.iter().any(|s| s == "gitlab_ci"))
        })
    }
}

#[derive(Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

pub fn load() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/classify_corpus.toml"
    );
    let text = std::fs::read_to_string(path).expect("corpus file is part of the repository");
    toml::from_str::<Corpus>(&text)
        .expect("corpus file is valid TOML")
        .case
}
