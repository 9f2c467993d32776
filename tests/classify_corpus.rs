//! Runs the whole classification corpus through `Classifier::classify` (the classify step of
//! client → framing → classify → route → pool → server) and reports every mismatch at once.

mod common {
    pub mod corpus;
}

use common::corpus::{self, Case};
use pgdecomp::classify::{Classification, Classifier, ClassifyCache};

fn mismatches(case: &Case, got: &Classification) -> Vec<String> {
    let mut out = Vec::new();
    let tables: Vec<&str> = got.tables.iter().map(|t| t.name.as_str()).collect();
    let schemas: Vec<String> = got.schemas.iter().map(|s| s.to_string()).collect();
    if got.kind.label() != case.kind {
        out.push(format!("kind {} (want {})", got.kind.label(), case.kind));
    }
    if tables != case.tables {
        out.push(format!("tables {tables:?} (want {:?})", case.tables));
    }
    if schemas != case.gitlab_schemas {
        out.push(format!(
            "gitlab_schemas {schemas:?} (want {:?})",
            case.gitlab_schemas
        ));
    }
    if got.cross_join.allowed != case.cross_join_allowed() {
        out.push(format!("cross_join.allowed {}", got.cross_join.allowed));
    }
    if got.cross_join.schemas != got.schemas {
        out.push("cross_join.schemas differ from schemas".into());
    }
    if got.error.is_some() != case.error {
        out.push(format!("error {:?}", got.error));
    }
    if let Some(want) = &case.statements {
        let kinds: Vec<&str> = got.statements.iter().map(|k| k.label()).collect();
        if kinds != *want {
            out.push(format!("statements {kinds:?} (want {want:?})"));
        }
    }
    out
}

#[test]
fn corpus_classifies_as_expected() {
    let cases = corpus::load();
    assert!(cases.len() >= 300, "corpus has {} cases", cases.len());
    let classifier = Classifier::gitlab_default();
    let mut failures = Vec::new();
    for case in &cases {
        let problems = mismatches(case, &classifier.classify(&case.sql));
        if !problems.is_empty() {
            failures.push(format!("{}\n    {}", case.sql, problems.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases mismatch:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn cache_answers_like_the_classifier() {
    let cases = corpus::load();
    let cache = ClassifyCache::new(Classifier::gitlab_default(), 1000);
    for _ in 0..2 {
        for case in &cases {
            let cached = cache.get(&case.sql);
            let problems = mismatches(case, &cached);
            assert!(problems.is_empty(), "{}: {problems:?}", case.sql);
        }
    }
}
