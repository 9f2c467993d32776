//! Unit tests for the relay scanner: dropping injected replies, partial messages, errors.

use super::scan::*;
use crate::protocol::backend::{empty, ready_for_query, PgError};
use crate::server::ServerStatements;
use bytes::{BufMut, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;

fn data_row(len: usize, out: &mut BytesMut) {
    out.put_u8(b'D');
    out.put_i32(4 + len as i32);
    out.put_slice(&vec![7u8; len]);
}

fn run(t: &mut Tracker, input: &[u8], chunk: usize) -> (BytesMut, Vec<ScanEvents>) {
    let mut prepared = ServerStatements::default();
    let mut params = HashMap::new();
    let mut out = BytesMut::new();
    let mut buf = BytesMut::new();
    let mut evs = Vec::new();
    for c in input.chunks(chunk) {
        buf.extend_from_slice(c);
        evs.push(
            t.scan(&mut buf, &mut out, &mut prepared, &mut params)
                .unwrap(),
        );
    }
    (out, evs)
}

#[test]
fn forwards_everything_for_plain_queries_in_any_chunking() {
    let mut input = BytesMut::new();
    data_row(100_000, &mut input);
    empty(b'n', &mut input);
    ready_for_query(b'I', &mut input);
    for chunk in [1, 3, 7, 4096, 1 << 20] {
        let mut t = Tracker::default();
        t.close(SegmentOwner::Client);
        let (out, evs) = run(&mut t, &input, chunk);
        assert_eq!(&out[..], &input[..], "chunk {chunk}");
        assert_eq!(evs.iter().map(|e| e.ready).sum::<u32>(), 1);
        assert!(t.is_idle());
    }
}

#[test]
fn drops_injected_parse_and_close_and_proxy_segments() {
    let mut t = Tracker::default();
    // Proxy's SET, then: injected Close + Parse (client Parse), injected Parse before Bind.
    t.close(SegmentOwner::Proxy);
    t.injected_close();
    t.parse_sent(Some(Arc::from("s1")), false);
    t.parse_sent(Some(Arc::from("s2")), true);
    t.client_message();
    t.close(SegmentOwner::Client);
    let mut input = BytesMut::new();
    empty(b'C', &mut input); // stands for SET's CommandComplete (body irrelevant here)
    ready_for_query(b'I', &mut input);
    empty(b'3', &mut input);
    empty(b'1', &mut input);
    empty(b'1', &mut input);
    empty(b'2', &mut input);
    ready_for_query(b'I', &mut input);
    for chunk in [1, 2, 64] {
        let mut t2 = Tracker::default();
        t2.close(SegmentOwner::Proxy);
        t2.injected_close();
        t2.parse_sent(Some(Arc::from("s1")), false);
        t2.parse_sent(Some(Arc::from("s2")), true);
        t2.client_message();
        t2.close(SegmentOwner::Client);
        let (out, _) = run(&mut t2, &input, chunk);
        let mut want = BytesMut::new();
        empty(b'1', &mut want);
        empty(b'2', &mut want);
        ready_for_query(b'I', &mut want);
        assert_eq!(&out[..], &want[..], "chunk {chunk}");
        assert!(t2.is_idle());
    }
    assert!(!t.is_idle());
}

#[test]
fn error_cancels_swallowing_and_unprepares() {
    let mut t = Tracker::default();
    t.parse_sent(Some(Arc::from("bad")), true);
    t.client_message();
    t.close(SegmentOwner::Client);
    let mut prepared = ServerStatements::default();
    prepared.insert(Arc::from("bad"));
    let mut input = BytesMut::new();
    PgError::error("42P01", "relation does not exist").encode(&mut input);
    ready_for_query(b'I', &mut input);
    let mut out = BytesMut::new();
    let mut buf = input.clone();
    t.scan(&mut buf, &mut out, &mut prepared, &mut HashMap::new())
        .unwrap();
    assert_eq!(&out[..], &input[..]);
    assert!(prepared.is_empty());
    assert!(t.is_idle());
    assert_eq!(t.status, b'I');
}

#[test]
fn syncs_sent_during_copy_in_are_merged_into_one_segment() {
    // Bind/Execute/Sync of COPY FROM STDIN, copy data, CopyDone, Sync: PostgreSQL ignores the
    // first Sync, so only one ReadyForQuery arrives.
    let mut t = Tracker::default();
    t.client_message();
    t.client_message();
    t.sync();
    let mut input = BytesMut::new();
    empty(b'2', &mut input);
    input.put_u8(b'G');
    input.put_i32(4 + 3);
    input.put_slice(&[0, 0, 0]);
    let (out, _) = run(&mut t, &input, 64);
    assert_eq!(&out[..], &input[..]);
    t.copy_done();
    t.sync();
    assert!(!t.is_idle());
    let mut input = BytesMut::new();
    empty(b'C', &mut input);
    ready_for_query(b'I', &mut input);
    let _ = run(&mut t, &input, 64);
    assert!(
        t.is_idle(),
        "one ReadyForQuery must end the merged copy segment"
    );
}

/// Scans one server read with a fresh client-params map; returns what reaches the client.
fn scan_read(t: &mut Tracker, mut input: BytesMut) -> BytesMut {
    let mut out = BytesMut::new();
    t.scan(
        &mut input,
        &mut out,
        &mut ServerStatements::default(),
        &mut HashMap::new(),
    )
    .unwrap();
    out
}

fn fatal(code: &'static str) -> BytesMut {
    let mut b = BytesMut::new();
    PgError::fatal(code, "terminating connection").encode(&mut b);
    b
}

/// A tracker with one client request waiting for its answer.
fn waiting() -> Tracker {
    let mut t = Tracker::default();
    t.client_message();
    t.close(SegmentOwner::Client);
    t
}

#[test]
fn a_fatal_answer_reaches_the_client_as_an_error() {
    let mut t = waiting();
    let out = scan_read(&mut t, fatal("57P01"));
    assert!(t.server_fatal);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("ERROR") && !text.contains("FATAL"), "{text}");
    assert!(text.contains("57P01"));
}

#[test]
fn an_unsolicited_fatal_stays_fatal() {
    // Idle in a transaction (session pooling, or an idle-in-transaction timeout).
    let mut t = Tracker::default();
    let out = scan_read(&mut t, fatal("25P03"));
    assert!(!t.server_fatal);
    assert!(String::from_utf8_lossy(&out).contains("FATAL"));
}

#[test]
fn a_fatal_after_the_answer_is_dropped_in_transaction_pooling() {
    // A shutdown racing the release: ReadyForQuery, then the FATAL, in one read.
    let mut t = waiting();
    t.drop_idle_fatal = true;
    let mut input = BytesMut::new();
    ready_for_query(b'I', &mut input);
    input.extend_from_slice(&fatal("57P01"));
    let out = scan_read(&mut t, input);
    assert!(t.server_fatal);
    assert!(
        !String::from_utf8_lossy(&out).contains("57P01"),
        "not forwarded"
    );
    assert_eq!(out.first(), Some(&b'Z'), "the answer itself still is");
}
