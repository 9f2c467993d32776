//! Property test of the session machine: random valid driver traffic through the proxy
//! (against fake servers) and straight to one fake server must look the same to the client,
//! run every statement exactly once, and count every execution exactly once.

use proptest::prelude::*;

use super::fake_pg::FakePg;
use super::harness::msg::*;
use super::harness::World;
use crate::protocol::Frame;

const SQL: [&str; 5] = [
    "SELECT 1 FROM projects",
    "SELECT 1 FROM ci_builds",
    "INSERT INTO ci_builds (id) VALUES (1)",
    "INSERT INTO projects (id) VALUES (1)",
    "SELECT 1",
];
const NAMES: [&str; 3] = ["a", "b", "c"];

/// Turns random choices into a valid message sequence (statements are executed only while
/// prepared, prepared only while free) and the number of executions in it.
fn traffic(choices: &[(u8, usize, usize)]) -> (Vec<Vec<Frame>>, usize) {
    let mut live = [false; 3];
    let mut batches = Vec::new();
    let mut executions = 0;
    for &(action, k, n) in choices {
        let sql = SQL[k % SQL.len()];
        let n = n % NAMES.len();
        let name = NAMES[n];
        let batch = match action % 12 {
            0 => vec![q("BEGIN")],
            1 => vec![q("COMMIT")],
            2 => vec![q("ROLLBACK")],
            3 => vec![q(sql)],
            4 => exec_params(sql),
            5 => exec_params("BEGIN"),
            6 if !live[n] => {
                live[n] = true;
                prepare(name, sql)
            }
            7 | 6 if live[n] => exec_prepared(name),
            8 if live[n] => {
                live[n] = false;
                vec![close_s(name), sync()]
            }
            9 if live[n] => vec![bind(name), execute(), bind(name), execute(), sync()],
            10 => exec_params("COMMIT"),
            11 if !live[n] => {
                live[n] = true;
                vec![parse(name, sql), describe_s(name), flush()]
            }
            _ => continue,
        };
        executions += batch
            .iter()
            .filter(|f| matches!(f.tag, b'Q' | b'B'))
            .count();
        batches.push(batch);
    }
    batches.push(vec![q("ROLLBACK")]);
    executions += 1;
    (batches, executions)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_proxy_is_transparent_and_counts_each_execution_once(
        choices in proptest::collection::vec((0u8..12, 0usize..5, 0usize..3), 0..40),
        pooled in any::<bool>(),
    ) {
        let (batches, executions) = traffic(&choices);
        let mut w = World::new(1, "observe");
        let mut c = w.client(None);
        let mut direct = FakePg::default();
        let mut expected = bytes::BytesMut::new();
        for batch in &batches {
            if pooled {
                w.send(&mut c, batch.clone());
            }
            let mut raw = bytes::BytesMut::new();
            for f in batch {
                raw.extend_from_slice(&f.raw);
            }
            expected.extend_from_slice(&direct.feed(&mut raw));
            if pooled && matches!(batch.last().map(|f| f.tag), Some(b'S' | b'Q')) {
                // The status the session tracks is the server's own.
                prop_assert_eq!(c.s.status().byte(), direct.status());
            }
        }
        if !pooled {
            // All at once: a pipelining client.
            w.send(&mut c, batches.concat());
        }
        let mut reference = w.client(None);
        reference.replies = expected;
        prop_assert_eq!(c.take(), reference.take());
        prop_assert_eq!(c.tally.executions, executions);
        let ran: Vec<String> = w.servers.values().flat_map(|(pg, _)| pg.executed.clone()).collect();
        prop_assert_eq!(sorted(ran), sorted(direct.executed.clone()));
        prop_assert!(w.servers.values().all(|(pg, _)| pg.missing.is_empty()));
    }
}
