use super::*;
use crate::classify::{Classifier, Dictionary, SchemaRules, StatementKind};

use StatementKind::{Read, Write};

fn row(schema: &str, name: &str, volatility: Volatility) -> FunctionInfo {
    FunctionInfo {
        schema: schema.into(),
        name: name.into(),
        volatility,
    }
}

/// A catalog like the integration test's: two user functions besides a few built-ins.
fn catalog() -> Vec<FunctionInfo> {
    use Volatility::*;
    vec![
        row("public", "func_that_writes", Volatile),
        row("public", "stable_fn", Stable),
        row("public", "pure_fn", Immutable),
        row("ops", "pure_fn", Volatile),
        row("pg_catalog", "lower", Immutable),
        row("pg_catalog", "random", Volatile),
        row("pg_catalog", "pg_current_wal_lsn", Volatile),
        row("pg_catalog", "txid_current", Stable), // wrong on purpose: the built-in wins
        row("pg_catalog", "set_config", Volatile),
    ]
}

fn check(classifier: &Classifier, cases: &[(&str, StatementKind)]) {
    for (sql, want) in cases {
        let got = classifier.classify(sql);
        assert_eq!(got.kind, *want, "{sql}: {:?}", got.error);
    }
}

#[test]
fn builtins_that_write_need_the_primary_with_or_without_a_catalog() {
    let cases = [
        ("SELECT lo_create(0)", Write),
        ("SELECT lo_creat(-1)", Write),
        ("SELECT lo_import('/tmp/x')", Write),
        ("SELECT lo_unlink(16385)", Write),
        ("SELECT lo_put(16385, 0, '\\x00')", Write),
        ("SELECT lo_from_bytea(0, 'abc')", Write),
        ("SELECT lowrite(0, 'abc')", Write),
        ("SELECT loread(0, 10)", Write),
        ("SELECT txid_current()", Write),
        ("SELECT txid_current_if_assigned()", Write),
        ("SELECT pg_current_xact_id()", Write),
        ("SELECT pg_current_xact_id_if_assigned()", Write),
        ("SELECT pg_catalog.txid_current()", Write),
        ("SELECT pg_notify('chan', 'payload')", Write),
        ("SELECT nextval('s')", Write),
        ("SELECT setval('s', 1)", Write),
        ("SELECT pg_advisory_lock(1)", Write),
        ("SELECT pg_advisory_xact_lock_shared(1)", Write),
        ("SELECT pg_try_advisory_lock(1)", Write),
        ("SELECT pg_try_advisory_xact_lock(1, 2)", Write),
        ("SELECT pg_advisory_unlock_all()", Write),
        ("SELECT pg_walfile_name('0/0')", Write),
        ("SELECT set_config('a.b', 'c', false)", Write),
        ("SELECT set_config('a.b', 'c', $1)", Write),
        ("SELECT set_config('a.b', 'c')", Write),
        ("SELECT set_config('a.b', 'c', 'off')", Write),
        ("SELECT * FROM set_config('a.b', 'c', true)", Write),
        ("SELECT set_config('a.b', 'c', true)", Read),
        ("SELECT set_config('a.b', 'c', 'on')", Read),
        ("SELECT pg_catalog.set_config('a.b', 'c', TRUE)", Read),
        ("SELECT TXID_CURRENT()", Write),
        ("SELECT \"txid_current\"()", Write),
    ];
    let bare = Classifier::gitlab_default();
    check(&bare, &cases);
    check(&bare.learn_functions(catalog()), &cases);
}

#[test]
fn volatile_or_unknown_functions_are_writes_wherever_they_are_called() {
    let cases = [
        ("SELECT func_that_writes()", Write),
        ("SELECT * FROM func_that_writes()", Write),
        (
            "SELECT * FROM projects WHERE id = func_that_writes()",
            Write,
        ),
        (
            "SELECT id FROM projects WHERE id IN (SELECT func_that_writes())",
            Write,
        ),
        (
            "WITH w AS (SELECT func_that_writes() AS x) SELECT x FROM w",
            Write,
        ),
        (
            "SELECT * FROM projects, LATERAL func_that_writes() f",
            Write,
        ),
        ("SELECT public.func_that_writes()", Write),
        ("SELECT ops.pure_fn()", Write),
        ("SELECT pure_fn()", Write), // public is immutable, ops volatile: the most volatile wins
        ("SELECT nowhere.stable_fn()", Write),
        ("SELECT pg_catalog.no_such_fn()", Write),
        ("SELECT \"Stable_Fn\"()", Write),
        ("SELECT pg_current_wal_lsn()", Write),
        ("SELECT currval('s')", Write),
        ("COPY (SELECT func_that_writes()) TO STDOUT", Write),
    ];
    check(&Classifier::gitlab_default(), &cases);
    check(
        &Classifier::gitlab_default().learn_functions(catalog()),
        &cases,
    );
}

#[test]
fn stable_and_immutable_calls_stay_reads() {
    let builtins = [
        "SELECT lower('X'), upper(name), length(name), now(), inet_server_port() FROM projects",
        "SELECT COUNT(*), max(id), sum(id), avg(id), array_agg(id), string_agg(name, ',') FROM projects",
        "SELECT bool_and(archived), jsonb_agg(id), json_object_agg(id, name) FROM projects",
        "SELECT coalesce(a, b), nullif(a, 0), greatest(a, b), least(a, b) FROM t",
        "SELECT CURRENT_TIMESTAMP, current_date, localtimestamp, current_user, session_user",
        "SELECT date_trunc('day', created_at), extract(epoch FROM created_at) FROM t",
        "SELECT settings->>'a', jsonb_array_length(settings) FROM projects",
        "SELECT row_number() OVER (ORDER BY id), lag(id) OVER () FROM projects",
        "SELECT ARRAY(SELECT id FROM projects), array_length(ARRAY[1, 2], 1)",
        "SELECT * FROM generate_series(1, 3) AS s(i)",
        "SELECT * FROM projects ORDER BY random() LIMIT 1",
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), clock_timestamp()",
        "SELECT pg_catalog.format_type(1, 2), current_setting('search_path')",
        "SELECT set_config('lock_writes.ci_builds', 'false', true)",
    ];
    let learned = Classifier::gitlab_default().learn_functions(catalog());
    for sql in builtins {
        check(&Classifier::gitlab_default(), &[(sql, Read)]);
        check(&learned, &[(sql, Read)]);
    }
    let user = [
        (
            "SELECT stable_fn(), lower('X'), now(), inet_server_port()",
            Read,
        ),
        ("SELECT * FROM public.stable_fn()", Read),
        ("SELECT id FROM projects WHERE id = STABLE_FN()", Read),
        ("SELECT public.pure_fn()", Read),
    ];
    check(&learned, &user);
    // Without the catalog the user's functions are unknown: primary.
    for (sql, _) in user {
        check(&Classifier::gitlab_default(), &[(sql, Write)]);
    }
}

#[test]
fn configured_overrides_win_over_the_catalog() {
    let classifier = Classifier::new(
        Dictionary::gitlab_default(),
        SchemaRules::gitlab_2022(),
        &[" Stable_Fn ".to_owned(), "ops.refresh".to_owned()],
    )
    .learn_functions([
        row("public", "stable_fn", Volatility::Stable),
        row("ops", "refresh", Volatility::Stable),
        row("public", "refresh", Volatility::Stable),
    ]);
    check(
        &classifier,
        &[
            ("SELECT stable_fn()", Write),
            ("SELECT public.stable_fn()", Write),
            ("SELECT ops.refresh()", Write),
            ("SELECT refresh()", Read),
            ("SELECT public.refresh()", Read),
        ],
    );
}

#[test]
fn learning_merges_overloads_and_a_new_read_replaces_the_old() {
    use Volatility::*;
    let mut functions = Functions::new(&[]);
    assert_eq!(functions.learned(), 0);
    functions.learn([
        row("public", "f", Immutable),
        row("public", "f", Volatile),
        row("public", "f", Stable),
        row("other", "f", Stable),
    ]);
    assert_eq!(functions.learned(), 2);
    assert_eq!(functions.volatility(Some("public"), "f"), Some(Volatile));
    assert_eq!(functions.volatility(Some("other"), "f"), Some(Stable));
    assert_eq!(functions.volatility(None, "f"), Some(Volatile));
    assert_eq!(functions.volatility(None, "g"), None);

    let first = Classifier::gitlab_default().learn_functions([row("public", "f", Stable)]);
    assert_eq!(first.functions.learned(), 1);
    check(&first, &[("SELECT f()", Read)]);
    let second = first.learn_functions([row("public", "g", Stable)]);
    assert_eq!(second.functions.learned(), 1);
    check(&second, &[("SELECT f()", Write), ("SELECT g()", Read)]);
}

#[test]
fn volatility_codes() {
    assert_eq!(Volatility::from_code('i'), Some(Volatility::Immutable));
    assert_eq!(Volatility::from_code('s'), Some(Volatility::Stable));
    assert_eq!(Volatility::from_code('v'), Some(Volatility::Volatile));
    assert_eq!(Volatility::from_code('x'), None);
    assert!(Volatility::Immutable < Volatility::Stable);
    assert!(Volatility::Stable < Volatility::Volatile);
}

#[test]
fn names_longer_than_postgres_keeps_fail_closed() {
    let long = "f".repeat(MAX_IDENTIFIER + 1);
    let classifier =
        Classifier::gitlab_default().learn_functions([row("public", &long, Volatility::Stable)]);
    check(&classifier, &[(&format!("SELECT {long}()"), Write)]);
    let fits = "f".repeat(MAX_IDENTIFIER);
    let classifier =
        Classifier::gitlab_default().learn_functions([row("public", &fits, Volatility::Stable)]);
    check(&classifier, &[(&format!("SELECT {fits}()"), Read)]);
}
