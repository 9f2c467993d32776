//! Unit tests of the session machine, continued: how batches are placed (Flush-ended
//! prepares, BEGIN in front of a describe, multi-statement queries).

use super::harness::msg::*;
use super::harness::World;
use super::tests::{cat, CROSS_JOIN, INS_CI};
use crate::route::Target;

#[test]
fn a_statement_prepared_with_flush_does_not_pull_the_next_transaction_along() {
    let mut w = World::new(1, "observe");
    let sel = "SELECT 1 FROM projects";
    // asyncpg's prepare(): Parse + Describe + Flush, outside and inside a transaction.
    let mut c = w.client(None);
    w.send(&mut c, vec![parse("a", sel), describe_s("a"), flush()]);
    w.send(
        &mut c,
        cat(vec![
            vec![q("BEGIN;")],
            exec_prepared("a"),
            vec![q("COMMIT;")],
        ]),
    );
    w.send(
        &mut c,
        cat(vec![
            vec![q("BEGIN;"), parse("b", sel), describe_s("b"), flush()],
            exec_prepared("b"),
            vec![q("COMMIT;")],
        ]),
    );
    assert_eq!(
        c.tally
            .decisions
            .iter()
            .filter(|(t, _)| *t == Target::Main)
            .count(),
        6,
        "{:?}",
        c.tally.decisions
    );
    assert!(
        w.executed(Target::MainReplica).is_empty(),
        "{:?}",
        w.executed(Target::MainReplica)
    );
    assert_eq!(
        w.executed(Target::Main),
        ["BEGIN;", sel, "COMMIT;", "BEGIN;", sel, "COMMIT;"]
    );
    let r = c.take();
    assert_eq!(r.iter().filter(|e| e.starts_with("Z:")).count(), 6, "{r:?}");
}

#[test]
fn a_begin_sent_with_a_describe_does_not_decide_the_transaction() {
    let mut w = World::new(7, "enforce");
    let mut c = w.client(None);
    // pgJDBC, autocommit off, first use of a named statement: BEGIN, then a describe round trip.
    w.send(
        &mut c,
        vec![
            parse("", "BEGIN"),
            bind(""),
            execute(),
            parse("S_1", INS_CI),
            describe_s("S_1"),
            sync(),
        ],
    );
    w.send(&mut c, vec![bind("S_1"), describe_p(), execute(), sync()]);
    w.send(&mut c, exec_params("COMMIT"));
    let r = c.take();
    assert!(!r.iter().any(|e| e.starts_with("E:")), "{r:?}");
    assert_eq!(w.executed(Target::Ci), ["BEGIN", INS_CI, "COMMIT"]);
}

#[test]
fn a_read_described_after_a_begin_runs_on_the_primary() {
    let mut w = World::new(1, "observe");
    let mut c = w.client(None);
    let sel = "SELECT 1 FROM projects";
    w.send(
        &mut c,
        vec![
            parse("", "BEGIN"),
            bind(""),
            execute(),
            parse("S_1", sel),
            describe_s("S_1"),
            sync(),
        ],
    );
    w.send(&mut c, vec![bind("S_1"), describe_p(), execute(), sync()]);
    w.send(&mut c, exec_params("COMMIT"));
    assert!(w.executed(Target::MainReplica).is_empty());
    assert_eq!(w.executed(Target::Main), ["BEGIN", sel, "COMMIT"]);
}

#[test]
fn each_statement_of_a_multi_statement_query_is_counted() {
    let mut w = World::new(4, "observe");
    let mut c = w.client(None);
    w.send(
        &mut c,
        vec![q(&format!("{CROSS_JOIN}; {CROSS_JOIN}; SELECT 1"))],
    );
    assert_eq!(c.tally.count("cross_join"), 2);
    assert_eq!(c.tally.executions, 3);
    let mut w = World::new(7, "enforce");
    let mut c = w.client(None);
    let script = "BEGIN; INSERT INTO ci_builds (id) VALUES (1); INSERT INTO projects (id) VALUES (1); COMMIT";
    w.send(&mut c, vec![q(script)]);
    let r = c.take();
    assert_eq!(r.last().map(String::as_str), Some("Z:I"), "{r:?}");
    assert!(r.iter().any(|e| e.starts_with("E:")), "{r:?}");
    assert_eq!(c.tally.rejected, 1);
    assert!(w.servers.values().all(|(pg, _)| pg.executed.is_empty()));
}

/// A client_encoding other than UTF8 sends text pgdecomp cannot read. Such a Query must not
/// pass for the empty query (routed by the session's group, counted as nothing): it fails
/// closed like an unparsable one. Such a Parse is refused, so no Bind runs it under another
/// statement's classification.
#[test]
fn a_statement_whose_text_is_not_utf8_fails_closed() {
    use crate::route::Reason;
    let mut w = World::new(1, "observe");
    let mut c = w.client(None);
    let latin1 = b"SELECT * FROM ci_builds WHERE name = '\xe9'\0";
    w.send(&mut c, vec![frame(b'Q', latin1)]);
    assert_eq!(c.tally.decisions, vec![(Target::Main, Reason::Unparsable)]);
    assert_eq!(w.executed(Target::Main).len(), 1);
    c.take();

    w.send(&mut c, exec_params(INS_CI));
    let executions = c.tally.executions;
    let mut body = b"\0".to_vec();
    body.extend_from_slice(&latin1[..latin1.len() - 1]);
    body.extend_from_slice(b"\0\0\0");
    w.send(
        &mut c,
        vec![frame(b'P', &body), bind(""), execute(), sync()],
    );
    assert_eq!(c.tally.executions, executions, "nothing ran");
    let replies = c.take();
    assert!(
        replies
            .iter()
            .any(|r| r.starts_with("E:") && r.contains("08P01")),
        "{replies:?}"
    );
}

/// A lone Query keeps the decision its planning made, unless a cutover released it into
/// another phase before it ran: then it is routed, checked and counted by the phase it runs in.
#[test]
fn a_query_released_into_the_next_phase_is_decided_by_it() {
    use super::harness::{plan_detached, send_unit, snapshot};
    use super::Ctx;
    use crate::route::Reason;
    use crate::server::ServerStatements;

    let w = World::new(1, "enforce");
    let mut ran = Vec::new();
    for adopted in [None, Some(snapshot(7, "enforce"))] {
        let mut c = w.client(None);
        let unit = vec![q(INS_CI)];
        let mut ctx = Ctx {
            cache: &w.cache,
            registry: &w.registry,
            observer: &mut c.tally,
        };
        let plan = plan_detached(&mut c.s, &unit, &mut ctx, &mut c.replies);
        if let Some(snap) = adopted {
            c.s.adopt(snap);
        }
        send_unit(
            &mut c.s,
            plan,
            &unit,
            &mut ctx,
            &mut ServerStatements::default(),
        );
        ran.push((c.tally.decisions.clone(), c.tally.rejected));
    }
    // Phase 1 writes ci tables on main; phase 7 refuses that write on main's connection.
    assert_eq!(ran[0], (vec![(Target::Main, Reason::Write)], 0));
    assert_eq!(ran[1].1, 1, "refused by phase 7: {:?}", ran[1]);
}

/// The client's read buffer reuses the space of messages already sent: a text that lands
/// where an earlier one sat, with the same length, is still classified as itself (the batch's
/// memo of classifications, keyed by address, must not outlive the batch).
#[test]
fn a_text_where_an_earlier_one_sat_is_classified_as_itself() {
    use bytes::{BufMut, BytesMut};

    use super::Ctx;
    use crate::protocol::frame::decode_frame;
    use crate::server::ServerStatements;

    fn put_query(buf: &mut BytesMut, sql: &str) {
        buf.put_u8(b'Q');
        buf.put_u32(u32::try_from(4 + sql.len() + 1).unwrap());
        buf.put_slice(sql.as_bytes());
        buf.put_u8(0);
    }
    let mut w = World::new(7, "enforce");
    let mut c = w.client(None);
    w.send(&mut c, vec![q("BEGIN"), q("UPDATE projects SET id = 1")]);
    assert_eq!(c.s.attached(), Some(Target::Main), "a transaction on main");
    let (mut stmts, mut out) = (ServerStatements::default(), BytesMut::new());
    let mut ctx = Ctx {
        cache: &w.cache,
        registry: &w.registry,
        observer: &mut c.tally,
    };
    let mut buf = BytesMut::with_capacity(64);
    put_query(&mut buf, "UPDATE projects SET id = 11");
    let first = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
    let at = first.body().as_ptr();
    c.s.client_frame(&first, &mut ctx, &mut stmts, &mut out);
    drop(first);
    buf.reserve(64);
    put_query(&mut buf, "UPDATE ci_builds SET id = 1");
    let second = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
    assert_eq!(
        second.body().as_ptr(),
        at,
        "the second text sits where the first did"
    );
    c.s.client_frame(&second, &mut ctx, &mut stmts, &mut out);
    assert_eq!(c.tally.rejected, 1, "phase 7 refuses the ci write on main");
}
