//! Logins under hostile input (issue 13, in part): half-open connections cannot lock real
//! clients out, repeated wrong passwords are slowed and counted, and the startup and SCRAM
//! deviations found by probing answer as PostgreSQL does, each with an ErrorResponse.

mod common;

use bytes::BytesMut;
use common::cluster::{wait_until, Kind, Topology, BOUND, DATABASE};
use common::proxy::{connect, Proxy, GITLAB};
use common::raw::{RawConn, Refusal};
use common::scrape::{metric, metrics};
use postgres_protocol::message::frontend;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn topology() -> &'static Topology {
    Topology::shared(Kind::MainOnly)
}

/// A startup packet as bytes: version word, then the given body.
fn startup(version: u32, body: &[u8]) -> Vec<u8> {
    let mut b = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(body);
    b
}

fn refused_with(refusal: &Refusal, code: &str, words: &str) {
    match refusal {
        Refusal::Error {
            code: got, message, ..
        } => {
            assert_eq!(got, code, "{refusal:?}");
            assert!(message.contains(words), "{refusal:?}");
        }
        Refusal::Closed => panic!("closed without an ErrorResponse; expected {code} {words}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_cannot_lock_logins_out() {
    let proxy = Proxy::with(topology(), |c| c.extra_pool("max_pending_logins = 200"));
    let mut half_open = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("connect");
        s.write_all(&[0, 0, 0, 40])
            .await
            .expect("half a startup packet");
        half_open.push(s);
    }
    wait_until("300 half-open connections are queued or evicted", || {
        let m = metrics(&proxy);
        metric(
            &m,
            "pgdecomp_login_failures_total",
            &[("reason", "evicted")],
        ) == 100.0
            && metric(&m, "pgdecomp_pending_logins", &[]) == 200.0
    });
    let started = Instant::now();
    let client = connect(&proxy.app_config())
        .await
        .expect("a real client still logs in");
    eprintln!(
        "login with 200 half-open connections queued: {:?}",
        started.elapsed()
    );
    client.simple_query("select 1").await.expect("and runs");
    let m = metrics(&proxy);
    assert_eq!(
        metric(
            &m,
            "pgdecomp_login_failures_total",
            &[("reason", "evicted")]
        ),
        101.0
    );
    assert_eq!(
        metric(&m, "pgdecomp_clients", &[]),
        1.0,
        "half-open connections are not clients"
    );
    // The first (oldest) was told why it was closed.
    let mut oldest = BytesMut::new();
    let read = tokio::time::timeout(BOUND, half_open[0].read_buf(&mut oldest)).await;
    assert!(matches!(read, Ok(Ok(n)) if n > 0), "{read:?}");
    assert_eq!(oldest[0], b'E');
    assert!(
        String::from_utf8_lossy(&oldest).contains("53300"),
        "{oldest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_are_slowed_and_counted() {
    let proxy = Proxy::with(topology(), |c| c);
    for n in 1..=6 {
        let err = connect(&proxy.config(GITLAB.0, "wrong", DATABASE))
            .await
            .err()
            .unwrap_or_else(|| panic!("wrong password {n} must fail"));
        let code = err.as_db_error().map(|e| e.code().code().to_string());
        assert_eq!(code.as_deref(), Some("28P01"), "{err:?}");
    }
    let m = metrics(&proxy);
    assert_eq!(
        metric(
            &m,
            "pgdecomp_login_failures_total",
            &[("reason", "password")]
        ),
        6.0
    );
    // Failures 4, 5 and 6 were held back (100, 200, 400 ms).
    assert_eq!(metric(&m, "pgdecomp_login_delays_total", &[]), 3.0);
    connect(&proxy.app_config())
        .await
        .expect("the right password is never delayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_packet_layout_errors_get_an_error_response() {
    let proxy = Proxy::with(topology(), |c| c);
    let v30 = 3 << 16;
    let mut too_long = b"user\0gitlab\0".to_vec();
    too_long.extend(std::iter::repeat_n(b'x', 12_000));
    for (what, bytes, words) in [
        (
            "no terminator",
            startup(v30, b"user\0gitlab\0"),
            "terminator",
        ),
        (
            "a name without a value",
            startup(v30, b"user\0gitlab\0database\0"),
            "missing value",
        ),
        (
            "more than 10000 bytes",
            startup(v30, &too_long),
            "invalid length",
        ),
    ] {
        let mut raw = RawConn::connect(proxy.port()).await;
        raw.send(&bytes).await;
        let refusal = raw.expect_refusal(BOUND).await;
        eprintln!("{what}: {refusal:?}");
        refused_with(&refusal, "08P01", words);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_protocol_minor_is_negotiated_down_to_3_0() {
    let proxy = Proxy::with(topology(), |c| c);
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .expect("connect");
    let body = format!(
        "user\0{}\0database\0{DATABASE}\0_pq_.test_option\0on\0\0",
        GITLAB.0
    );
    s.write_all(&startup((3 << 16) | 2, body.as_bytes()))
        .await
        .expect("send");
    let mut got = BytesMut::new();
    while got.len() < 24 {
        let n = tokio::time::timeout(BOUND, s.read_buf(&mut got))
            .await
            .expect("reply")
            .expect("read");
        assert!(n > 0, "closed early: {got:?}");
    }
    let want: &[u8] = b"v\0\0\0\x1d\0\0\0\0\0\0\0\x01_pq_.test_option\0";
    assert_eq!(&got[..want.len()], want, "{got:?}");
    assert_eq!(
        got[want.len()],
        b'R',
        "then the authentication request: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_client_first_with_a_mandatory_extension_is_refused() {
    let proxy = Proxy::with(topology(), |c| c);
    let mut raw = RawConn::connect(proxy.port()).await;
    let mut out = BytesMut::new();
    frontend::startup_message([("user", GITLAB.0), ("database", DATABASE)], &mut out).unwrap();
    raw.send(&out).await;
    let mut out = BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,m=ext,n=,r=abcdefgh", &mut out).unwrap();
    raw.send(&out).await;
    let refusal = raw.expect_refusal(BOUND).await;
    refused_with(&refusal, "28000", "extension");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_while_a_batch_waits_for_sync_closes_the_connection() {
    let proxy = Proxy::with(topology(), |c| c);
    let mut raw = RawConn::login(proxy.port(), GITLAB.0, GITLAB.1, DATABASE).await;
    let mut out = BytesMut::new();
    frontend::parse("", "select 1", std::iter::empty(), &mut out).unwrap();
    frontend::terminate(&mut out);
    raw.send(&out).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), raw.next()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the proxy closes after Terminate (timed out: {})",
        closed.is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_per_database_caps_refuse_the_next_login_only() {
    let proxy = Proxy::with(topology(), |c| {
        c.extra_pool("max_user_connections = 3\nmax_db_connections = 4")
    });
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&proxy.app_config()).await.expect("under the cap"));
    }
    let Err(err) = connect(&proxy.app_config()).await else {
        panic!("a fourth gitlab login is over max_user_connections");
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert!(db.message().contains("max_user_connections"), "{db:?}");
    for c in &held {
        c.simple_query("select 1")
            .await
            .expect("the others carry on");
    }
    // Another user may still log in, up to the database's cap.
    let other = connect(&proxy.config(
        common::proxy::MD5_CLIENT.0,
        common::proxy::MD5_CLIENT.1,
        DATABASE,
    ))
    .await
    .expect("another user, 4th client of the database");
    let Err(err) = connect(&proxy.config(
        common::proxy::MD5_CLIENT.0,
        common::proxy::MD5_CLIENT.1,
        DATABASE,
    ))
    .await
    else {
        panic!("a fifth client of the database is over max_db_connections");
    };
    assert!(format!("{err:?}").contains("max_db_connections"), "{err:?}");
    drop(other);
    held.pop();
    wait_until("a slot is free again", || {
        metric(&metrics(&proxy), "pgdecomp_clients", &[]) == 2.0
    });
    connect(&proxy.app_config())
        .await
        .expect("a freed slot is usable");
    let m = metrics(&proxy);
    assert_eq!(
        metric(
            &m,
            "pgdecomp_client_limit_total",
            &[("limit", "max_user_connections")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "pgdecomp_client_limit_total",
            &[("limit", "max_db_connections")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_closed_after_client_idle_timeout_but_not_inside_a_transaction() {
    let proxy = Proxy::with(topology(), |c| c.extra_pool("client_idle_timeout = 1.0"));
    let idle = connect(&proxy.app_config()).await.expect("login");
    let busy = connect(&proxy.app_config()).await.expect("login");
    busy.batch_execute("begin").await.expect("begin");
    busy.simple_query("select 1")
        .await
        .expect("in a transaction");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        idle.simple_query("select 1").await.is_err(),
        "closed after 1 s idle"
    );
    busy.simple_query("select 2")
        .await
        .expect("a transaction is not idle");
    busy.batch_execute("commit").await.expect("commit");
    let m = metrics(&proxy);
    assert_eq!(
        metric(
            &m,
            "pgdecomp_client_limit_total",
            &[("limit", "client_idle_timeout")]
        ),
        1.0
    );
}
