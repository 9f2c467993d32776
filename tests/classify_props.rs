//! Robustness of the classify step (client → framing → classify → route → pool → server): no
//! input may panic, hang or overflow the stack, and the answer must be self-consistent.

mod common {
    pub mod corpus;
}

use pgdecomp::classify::{Classification, Classifier, ClassifyCache, StatementKind};
use proptest::prelude::*;

/// Invariants every classification keeps, whatever the input.
fn check_consistent(c: &Classification) {
    let strictest = c.statements.iter().map(|k| k.strictness()).max();
    match strictest {
        Some(s) => assert_eq!(c.kind.strictness(), s),
        None => assert_eq!(c.kind, StatementKind::Utility),
    }
    assert_eq!(
        c.error.is_some(),
        c.statements.contains(&StatementKind::Unknown)
    );
    let mut schemas: Vec<_> = c.tables.iter().map(|t| t.schema.clone()).collect();
    schemas.sort();
    schemas.dedup();
    assert_eq!(schemas, c.schemas);
    assert_eq!(c.cross_join.schemas, c.schemas);
    for (i, t) in c.tables.iter().enumerate() {
        assert!(!t.name.is_empty());
        assert!(
            c.tables[..i].iter().all(|u| u.name != t.name),
            "duplicate {}",
            t.name
        );
    }
}

/// Corpus statements with a random edit: a deleted span, a duplicated span or an inserted token.
fn mutated_corpus() -> impl Strategy<Value = String> {
    let cases: Vec<String> = common::corpus::load().into_iter().map(|c| c.sql).collect();
    let tokens = prop::sample::select(vec![
        "(",
        ")",
        "'",
        "\"",
        ";",
        "$$",
        "/*",
        "*/",
        "--",
        "SELECT",
        "FROM",
        "WITH",
        "FOR UPDATE",
        "JOIN",
        ",",
        ".",
        "1",
        "$1",
        "E'\\'",
        "\n",
        "LATERAL",
        "UNION",
        "INSERT INTO",
        "ci_builds",
    ]);
    (
        prop::sample::select(cases),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        0..3u8,
        tokens,
    )
        .prop_map(|(sql, a, b, op, token)| {
            let chars: Vec<char> = sql.chars().collect();
            let (mut i, mut j) = (a.index(chars.len() + 1), b.index(chars.len() + 1));
            if i > j {
                std::mem::swap(&mut i, &mut j);
            }
            let (head, tail) = (&chars[..i], &chars[j..]);
            let middle: String = chars[i..j].iter().collect();
            let head: String = head.iter().collect();
            let tail: String = tail.iter().collect();
            match op {
                0 => format!("{head}{tail}"),
                1 => format!("{head}{middle}{middle}{tail}"),
                _ => format!("{head}{token}{middle}{tail}"),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(sql in "\\PC{0,200}") {
        check_consistent(&Classifier::gitlab_default().classify(&sql));
    }

    #[test]
    fn sql_like_text_never_panics(sql in "(SELECT|FROM|WITH|\\(|\\)|'|\"|;|,|\\.|[a-z_]{1,8}|[0-9]{1,3}|\\$1|/\\*|\\*/|--|\n| ){0,60}") {
        check_consistent(&Classifier::gitlab_default().classify(&sql));
    }

    #[test]
    fn mutated_corpus_never_panics(sql in mutated_corpus()) {
        let classifier = Classifier::gitlab_default();
        let direct = classifier.classify(&sql);
        check_consistent(&direct);
        // Same answer twice (pure) and through the cache, except for shared parse errors.
        prop_assert_eq!(&direct, &classifier.classify(&sql));
        let cached = ClassifyCache::new(classifier, 16).get(&sql);
        prop_assert_eq!(&direct, &*cached);
    }
}

fn assert_deep_is_error(sql: &str) {
    let c = Classifier::gitlab_default().classify(sql);
    assert_eq!(
        c.kind,
        StatementKind::Unknown,
        "{}",
        &sql[..40.min(sql.len())]
    );
    assert!(c.error.is_some());
}

#[test]
fn deeply_nested_parentheses_are_an_error() {
    for depth in [500, 5_000, 50_000] {
        assert_deep_is_error(&format!(
            "SELECT {}1{}",
            "(".repeat(depth),
            ")".repeat(depth)
        ));
        assert_deep_is_error(&format!("SELECT {}", "(".repeat(depth)));
        let subqueries = "(SELECT * FROM ci_builds WHERE id IN ".repeat(depth);
        assert_deep_is_error(&format!(
            "SELECT * FROM projects WHERE id IN {subqueries}(1){}",
            ")".repeat(depth)
        ));
    }
}

#[test]
fn small_stack_survives_deep_and_long_input() {
    let inputs = vec![
        format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000)),
        format!(
            "SELECT * FROM t WHERE {}",
            vec!["a = 1"; 20_000].join(" AND ")
        ),
        format!("SELECT 1{}", " + 1".repeat(50_000)),
        format!("SELECT {}", "NOT ".repeat(20_000)),
        format!("SELECT {}1", "-".repeat(20_000)),
        format!("SELECT ARRAY{}1{}", "[".repeat(5_000), "]".repeat(5_000)),
        format!("SELECT 1{}", " UNION SELECT 1".repeat(20_000)),
        format!("SELECT 1{} +", " + 1".repeat(50_000)),
        format!("SELECT a, b{}", " UNION SELECT a, b".repeat(20_000)),
    ];
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let classifier = Classifier::gitlab_default();
            inputs
                .iter()
                .map(|sql| classifier.classify(sql).kind)
                .collect::<Vec<_>>()
        })
        .expect("spawning a test thread");
    let kinds = handle
        .join()
        .expect("classification on a 256 KiB stack must not overflow");
    assert_eq!(kinds.len(), 9);
    assert!(
        kinds.iter().all(|k| *k == StatementKind::Unknown),
        "{kinds:?}"
    );
}

#[test]
fn long_but_reasonable_chains_still_classify_on_a_small_stack() {
    let sql = format!(
        "SELECT * FROM ci_builds WHERE {}",
        vec!["a = 1"; 990].join(" AND ")
    );
    let union = format!(
        "SELECT id FROM ci_builds{}",
        " UNION SELECT id FROM ci_pipelines".repeat(1_500)
    );
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let classifier = Classifier::gitlab_default();
            (classifier.classify(&sql), classifier.classify(&union))
        })
        .expect("spawning a test thread");
    let (chain, union) = handle.join().expect("no stack overflow");
    assert_eq!(chain.kind, StatementKind::Read, "{:?}", chain.error);
    assert_eq!(chain.tables.len(), 1);
    assert_eq!(union.kind, StatementKind::Read, "{:?}", union.error);
    assert_eq!(union.tables.len(), 2);
}
