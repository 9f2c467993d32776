//! `pgdecomp classify` end to end: the built binary answers every corpus statement (the classify
//! step of client → framing → classify → route → pool → server, seen from the command line).

mod common {
    pub mod corpus;
}

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::corpus::{self, Case};
use serde_json::Value;

fn pgdecomp(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgdecomp"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the pgdecomp binary is built for integration tests");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("writing stdin");
    drop(input);
    child.wait_with_output().expect("waiting for pgdecomp")
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("pgdecomp classify prints one JSON object")
}

fn check(case: &Case, got: &Value) -> Result<(), String> {
    let want = serde_json::json!({
        "kind": case.kind,
        "tables": case.tables,
        "gitlab_schemas": case.gitlab_schemas,
        "cross_join": {"allowed": case.cross_join_allowed(), "schemas": case.gitlab_schemas},
    });
    let mut got = got.clone();
    let error = got
        .as_object_mut()
        .and_then(|o| o.remove("error"))
        .unwrap_or(Value::Null);
    if got != want {
        return Err(format!("{}\n  got  {got}\n  want {want}", case.sql));
    }
    if error.is_string() != case.error {
        return Err(format!("{}\n  error {error}", case.sql));
    }
    Ok(())
}

#[test]
fn every_corpus_statement_via_stdin() {
    let cases = corpus::load();
    // A few processes at a time keeps this quick on a small machine.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = cases
            .chunks(cases.len().div_ceil(4))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|case| {
                            check(case, &json(&pgdecomp(&["classify"], Some(&case.sql)))).err()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sql_as_argument_and_text_format() {
    let sql = r#"SELECT "ci_builds".* FROM "ci_builds" INNER JOIN "projects" ON "projects"."id" = "ci_builds"."project_id""#;
    let got = json(&pgdecomp(&["classify", "--format", "json", sql], None));
    assert_eq!(got["kind"], "read");
    assert_eq!(got["cross_join"]["allowed"], false);
    let text = pgdecomp(&["classify", "--format", "text", sql], None);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("ci_builds (read, gitlab_ci)"), "{text}");
    assert!(
        text.contains("gitlab_schemas: gitlab_ci,gitlab_main"),
        "{text}"
    );
}

#[test]
fn unparsable_sql_exits_zero_with_unknown_kind() {
    for sql in ["SELEC * FROM projects", "SELECT ((((1", "\u{1}garbage'"] {
        let got = json(&pgdecomp(&["classify", sql], None));
        assert_eq!(got["kind"], "unknown");
        assert!(got["error"].is_string());
    }
    let deep = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let got = json(&pgdecomp(&["classify"], Some(&deep)));
    assert_eq!(got["kind"], "unknown");
}

#[test]
fn config_file_sets_dictionary_rules_and_write_functions() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("classify_cli_config");
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    std::fs::write(
        dir.join("dict.tsv"),
        "table\tgitlab_schema\nmy_other_table\tgitlab_ci\nprojects\tgitlab_main\n",
    )
    .expect("writing dictionary");
    std::fs::write(
        dir.join("rules.toml"),
        "unlisted = \"strict\"\n[gitlab_main]\n[gitlab_ci]\n",
    )
    .expect("writing rules");
    let config = dir.join("pgdecomp.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:6432\"\n[classify]\ndictionary = \"dict.tsv\"\nschema_rules = \"rules.toml\"\nwrite_functions = [\"My_Writer\"]\ncache_size = 10\n",
    )
    .expect("writing config");
    let config = config.to_str().expect("temp path is UTF-8");
    let got = json(&pgdecomp(
        &[
            "classify",
            "--config",
            config,
            "SELECT my_writer() FROM my_other_table",
        ],
        None,
    ));
    assert_eq!(got["kind"], "write");
    assert_eq!(got["gitlab_schemas"], serde_json::json!(["gitlab_ci"]));
    let got = json(&pgdecomp(
        &[
            "classify",
            "--config",
            config,
            "SELECT * FROM projects, unknown_t",
        ],
        None,
    ));
    assert_eq!(
        got["gitlab_schemas"],
        serde_json::json!(["gitlab_main", "undefined_unknown_t"])
    );
    assert_eq!(
        got["cross_join"]["allowed"], false,
        "strict rules: undefined joins nothing"
    );

    let missing = pgdecomp(
        &[
            "classify",
            "--config",
            "/nonexistent/pgdecomp.toml",
            "SELECT 1",
        ],
        None,
    );
    assert!(!missing.status.success());
}
