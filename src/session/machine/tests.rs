//! Unit tests of the session machine: frame sequences as drivers send them, against fake
//! servers, checking counts, where statements ran and what the client was told.

use super::harness::msg::*;
use super::harness::World;
use crate::route::{Group, Target};

pub(super) const INS_CI: &str = "INSERT INTO ci_builds (id) VALUES ($1)";
pub(super) const INS_MAIN: &str = "INSERT INTO projects (id) VALUES ($1)";
pub(super) const CROSS_JOIN: &str =
    "SELECT 1 FROM projects JOIN ci_builds ON ci_builds.project_id = projects.id";

pub(super) fn cat(parts: Vec<Vec<crate::protocol::Frame>>) -> Vec<crate::protocol::Frame> {
    parts.into_iter().flatten().collect()
}

#[test]
fn named_statements_reused_across_transactions_are_checked_every_time() {
    for phase in [1, 4] {
        let mut w = World::new(phase, "observe");
        let mut c = w.client(None);
        w.send(
            &mut c,
            cat(vec![prepare("s_ci", INS_CI), prepare("s_main", INS_MAIN)]),
        );
        for _ in 0..20 {
            w.send(
                &mut c,
                cat(vec![
                    vec![q("BEGIN")],
                    exec_prepared("s_ci"),
                    exec_prepared("s_main"),
                    vec![q("COMMIT")],
                ]),
            );
        }
        assert_eq!(
            c.tally.count("cross_database_modification"),
            20,
            "phase {phase}"
        );
        let replies = c.take();
        assert!(!replies.iter().any(|r| r.starts_with("E:")), "{replies:?}");
    }
}

#[test]
fn phase_7_refuses_every_cross_database_write_and_keeps_the_statements() {
    let mut w = World::new(7, "enforce");
    let mut c = w.client(None);
    w.send(
        &mut c,
        cat(vec![prepare("P_1", INS_CI), prepare("P_2", INS_MAIN)]),
    );
    c.take();
    for _ in 0..20 {
        w.send(
            &mut c,
            cat(vec![
                vec![q("BEGIN")],
                exec_prepared("P_1"),
                exec_prepared("P_2"),
            ]),
        );
        let r = c.take();
        assert_eq!(r.last().map(String::as_str), Some("Z:E"), "{r:?}");
        assert!(r.iter().any(|e| e == "E:2F002" || e == "E:42000"), "{r:?}");
        w.send(&mut c, vec![q("ROLLBACK")]);
        assert_eq!(c.take(), ["C:ROLLBACK", "Z:I"]);
    }
    assert_eq!(c.tally.rejected, 20);
    assert!(w
        .executed(Target::Ci)
        .iter()
        .all(|s| !s.contains("projects")));
    assert!(w
        .executed(Target::Main)
        .iter()
        .all(|s| !s.contains("ci_builds")));
    assert_eq!(
        w.executed(Target::Ci)
            .iter()
            .filter(|s| s.contains("ci_builds"))
            .count(),
        20
    );
    // The refusals cost no statement: the next transaction uses both again.
    w.send(
        &mut c,
        cat(vec![
            vec![q("BEGIN")],
            exec_prepared("P_1"),
            vec![q("COMMIT")],
        ]),
    );
    assert!(!c.take().iter().any(|r| r.starts_with("E:")));
    assert!(w.servers.values().all(|(pg, _)| pg.missing.is_empty()));
}

#[test]
fn statements_prepared_before_the_transaction_are_checked_inside_it() {
    let mut w = World::new(1, "observe");
    let mut c = w.client(None);
    // asyncpg's prepare(): Parse + Describe + Sync, then Bind/Execute/Sync per execution.
    w.send(&mut c, vec![parse("a1", INS_CI), describe_s("a1"), sync()]);
    w.send(
        &mut c,
        vec![parse("a2", INS_MAIN), describe_s("a2"), sync()],
    );
    assert_eq!(c.tally.executions, 0, "preparing is not executing");
    for _ in 0..20 {
        w.send(
            &mut c,
            cat(vec![
                vec![q("BEGIN;")],
                exec_prepared("a1"),
                exec_prepared("a2"),
                vec![q("COMMIT;")],
            ]),
        );
    }
    assert_eq!(c.tally.count("cross_database_modification"), 20);
}

#[test]
fn an_extended_begin_waits_for_the_first_statement_to_pick_the_server() {
    let mut w = World::new(7, "enforce");
    // pgbench -M extended: every command is Parse/Bind/Describe/Execute/Sync.
    let mut c = w.client(None);
    for _ in 0..5 {
        w.send(
            &mut c,
            cat(vec![
                exec_params("BEGIN"),
                exec_params(INS_CI),
                exec_params("SELECT 1 FROM ci_builds"),
                exec_params("END"),
            ]),
        );
    }
    let r = c.take();
    assert!(!r.iter().any(|e| e.starts_with("E:")), "{r:?}");
    assert_eq!(r.iter().filter(|e| *e == "Z:T").count(), 15, "{r:?}");
    let ci = w.executed(Target::Ci);
    assert_eq!(ci.iter().filter(|s| *s == "BEGIN").count(), 5, "{ci:?}");
    assert!(w.executed(Target::Main).is_empty());
    // pgbench -M prepared: every command prepared first, then executed by name.
    let mut c = w.client(None);
    let script = [("P_0", "BEGIN"), ("P_1", INS_CI), ("P_2", "END")];
    for (n, sql) in script {
        w.send(&mut c, prepare(n, sql));
    }
    for _ in 0..5 {
        for (n, _) in script {
            w.send(&mut c, exec_prepared(n));
        }
    }
    let r = c.take();
    assert!(!r.iter().any(|e| e.starts_with("E:")), "{r:?}");
    assert_eq!(
        w.executed(Target::Ci)
            .iter()
            .filter(|s| *s == INS_CI)
            .count(),
        10
    );
    assert!(w.executed(Target::Main).is_empty());
}

#[test]
fn a_begin_in_the_same_batch_as_the_first_statement_pins_that_statement() {
    let mut w = World::new(7, "enforce");
    let mut c = w.client(None);
    // pgJDBC with autocommit off.
    w.send(
        &mut c,
        vec![
            parse("", "BEGIN"),
            bind(""),
            execute(),
            parse("", INS_CI),
            bind(""),
            describe_p(),
            execute(),
            sync(),
        ],
    );
    w.send(&mut c, exec_params(INS_MAIN));
    w.send(&mut c, exec_params("COMMIT"));
    let r = c.take();
    assert!(r.contains(&"E:2F002".to_string()), "{r:?}");
    assert_eq!(c.tally.count("locked_table_write"), 1);
    assert!(w.executed(Target::Ci).iter().any(|s| s == INS_CI));
    assert!(w.executed(Target::Main).is_empty());
}

#[test]
fn an_unnamed_statement_is_counted_once_per_execution() {
    let mut w = World::new(4, "observe");
    let mut c = w.client(None);
    // asyncpg with statement_cache_size=0: Parse/Describe/Sync, then Bind/Execute/Sync.
    for _ in 0..20 {
        w.send(&mut c, vec![parse("", CROSS_JOIN), describe_s(""), sync()]);
        w.send(&mut c, vec![bind(""), describe_p(), execute(), sync()]);
    }
    assert_eq!(c.tally.count("cross_join"), 20);
    assert_eq!(c.tally.executions, 20);
    assert!(!c.take().iter().any(|e| e.starts_with("E:")));
}

#[test]
fn every_execution_of_a_pipeline_is_counted() {
    let mut w = World::new(4, "observe");
    let mut c = w.client(None);
    let mut frames = vec![parse("p", CROSS_JOIN)];
    for _ in 0..7 {
        frames.extend([bind("p"), execute()]);
    }
    frames.push(sync());
    frames.extend(exec_params(CROSS_JOIN));
    w.send(&mut c, frames);
    assert_eq!(c.tally.count("cross_join"), 8);
    assert_eq!(c.tally.executions, 8);
}

#[test]
fn two_clients_alternating_share_server_statements_without_losing_any() {
    let mut w = World::new(1, "observe");
    let mut a = w.client(None);
    let mut b = w.client(None);
    for i in 0..10 {
        for c in [&mut a, &mut b] {
            let mut frames = vec![q("BEGIN")];
            if i == 0 {
                frames.push(parse("_pg3_0", "SELECT 1 FROM projects WHERE id = $1"));
            }
            frames.extend([bind("_pg3_0"), describe_p(), execute(), sync(), q("COMMIT")]);
            w.send(c, frames);
            let r = c.take();
            assert!(!r.iter().any(|e| e.starts_with("E:")), "{r:?}");
        }
    }
    assert!(w.servers.values().all(|(pg, _)| pg.missing.is_empty()));
}

#[test]
fn wrong_schema_on_a_db_config_connection_is_counted_per_execution() {
    let mut w = World::new(4, "observe");
    let mut c = w.client(Some(Group::Main));
    w.send(&mut c, prepare("s", "SELECT 1 FROM ci_builds"));
    for _ in 0..20 {
        w.send(&mut c, exec_prepared("s"));
    }
    assert_eq!(c.tally.count("wrong_schema"), 20);
}

#[test]
fn an_error_inside_a_held_transaction_is_answered_as_postgresql_would() {
    let mut w = World::new(1, "observe");
    let mut c = w.client(None);
    w.send(&mut c, vec![q("BEGIN")]);
    // An unknown statement: the proxy answers the error itself; the transaction is aborted.
    w.send(&mut c, exec_prepared("nope"));
    w.send(&mut c, vec![q("SELECT 1 FROM projects")]);
    w.send(&mut c, vec![q("ROLLBACK")]);
    w.send(&mut c, vec![q("SELECT 1 FROM projects")]);
    assert_eq!(
        c.take(),
        [
            "C:BEGIN",
            "Z:T",
            "E:26000",
            "Z:E",
            "E:25P02",
            "Z:E",
            "C:ROLLBACK",
            "Z:I",
            "C:SELECT 1",
            "Z:I"
        ]
    );
}

#[test]
fn deallocate_forgets_the_client_statement_only() {
    let mut w = World::new(1, "observe");
    let mut a = w.client(None);
    let mut b = w.client(None);
    w.send(&mut a, prepare("x", "SELECT 1 FROM projects"));
    w.send(&mut b, prepare("y", "SELECT 1 FROM projects"));
    w.send(&mut a, exec_prepared("x"));
    w.send(&mut a, vec![q("DEALLOCATE x")]);
    w.send(&mut b, exec_prepared("y"));
    w.send(&mut a, exec_prepared("x"));
    assert_eq!(
        a.take(),
        [
            "1",
            "Z:I",
            "2",
            "n",
            "C:SELECT 1",
            "Z:I",
            "C:DEALLOCATE",
            "Z:I",
            "E:26000",
            "Z:I"
        ]
    );
    assert!(!b.take().iter().any(|e| e.starts_with("E:")));
}

#[test]
fn the_unnamed_statement_follows_the_client_to_the_next_server_connection() {
    let mut w = World::new(1, "observe");
    let mut c = w.client(None);
    w.send(&mut c, vec![parse("", "SELECT 1 FROM projects"), sync()]);
    w.send(&mut c, vec![bind(""), execute(), sync()]);
    assert_eq!(c.take(), ["1", "Z:I", "2", "C:SELECT 1", "Z:I"]);
    assert_eq!(c.tally.executions, 1);
}

#[test]
fn a_session_resting_between_batches_keeps_its_statements_and_its_transaction() {
    let mut w = World::new(4, "observe");
    let mut c = w.client(None);
    w.send(
        &mut c,
        cat(vec![prepare("s_ci", INS_CI), prepare("s_main", INS_MAIN)]),
    );
    // A rest between batches, detached (after the prepares, after the held BEGIN) and attached
    // (inside the transaction, where it must keep the reply tracker).
    c.s.rest();
    w.send(&mut c, vec![q("BEGIN")]);
    c.s.rest();
    w.send(&mut c, exec_prepared("s_ci"));
    c.s.rest();
    w.send(
        &mut c,
        cat(vec![exec_prepared("s_main"), vec![q("COMMIT")]]),
    );
    c.s.rest();
    w.send(&mut c, exec_prepared("s_main"));
    assert_eq!(c.tally.count("cross_database_modification"), 1);
    let replies = c.take();
    assert!(!replies.iter().any(|r| r.starts_with("E:")), "{replies:?}");
}
