//! Large messages (issue 13, in part): a 200 MiB Query is forwarded at less than twice its size
//! in proxy memory, a message over max_message_size gets its own error and counter while other
//! clients go on, and statements over classify.max_statement_bytes still route by their tables
//! (or fail closed), checked on the server that ran them.

mod common;

use bytes::{BufMut, BytesMut};
use common::cluster::{Kind, Topology, DATABASE};
use common::proxy::{Proxy, GITLAB};
use common::raw::{RawConn, Refusal};
use common::scrape::{metric, metrics};
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

const MIB: usize = 1 << 20;

/// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> usize {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn first_row(rows: &[SimpleQueryMessage]) -> Vec<String> {
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or_default().to_string())
                    .collect(),
            ),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_query_costs_the_proxy_less_than_twice_its_size() {
    let proxy = Proxy::with(Topology::shared(Kind::MainOnly), |c| c);
    let client = proxy.connect().await;
    client.simple_query("select 1").await.expect("warm up");
    let before = status_kib(proxy.pid(), "VmRSS");
    let literal = "x".repeat(200 * MIB);
    let sql = format!("select length('{literal}')");
    let message = sql.len() + 6;
    drop(literal);
    let rows = client.simple_query(&sql).await.expect("the 200 MiB query");
    drop(sql);
    assert_eq!(first_row(&rows), [(200 * MIB).to_string()]);
    let peak = status_kib(proxy.pid(), "VmHWM") * 1024;
    let after = status_kib(proxy.pid(), "VmRSS");
    eprintln!(
        "200 MiB Query: proxy RSS before {before} KiB, peak {} KiB ({:.2}x the message), after {after} KiB",
        peak / 1024,
        peak as f64 / message as f64
    );
    assert!(
        peak < 2 * message,
        "peak {peak} bytes for a {message} byte message"
    );
    assert!(
        after < before + 64 * 1024,
        "the message's memory is released: {before} KiB before, {after} KiB after"
    );
    let again = client.simple_query("select 2").await.expect("still usable");
    assert_eq!(first_row(&again), ["2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_size_is_refused_and_counted() {
    let proxy = Proxy::with(Topology::shared(Kind::MainOnly), |c| c);
    let bystander = proxy.connect().await;
    let mut raw = RawConn::login(proxy.port(), GITLAB.0, GITLAB.1, DATABASE).await;
    // A Query declaring 2 GiB (the protocol's largest length), then the first MiB of it.
    let mut header = BytesMut::new();
    header.put_u8(b'Q');
    header.put_i32(i32::MAX);
    raw.send(&header).await;
    let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &vec![b'x'; MIB]).await;
    match raw.expect_refusal(Duration::from_secs(10)).await {
        Refusal::Error {
            severity,
            code,
            message,
        } => {
            assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "54000"));
            assert!(message.contains("max_message_size"), "{message}");
        }
        Refusal::Closed => panic!("closed without an ErrorResponse"),
    }
    let rows = bystander
        .simple_query("select 3")
        .await
        .expect("other clients go on");
    assert_eq!(first_row(&rows), ["3"]);
    let m = metrics(&proxy);
    let limit = [("limit", "max_message_size")];
    assert_eq!(metric(&m, "pgdecomp_client_limit_total", &limit), 1.0);
}

/// Phase 4 reads ci tables on the CI replica. A 2 MiB statement (over the 1 MiB default) made
/// long by a literal still goes there; one made long by tokens fails closed to the main primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_over_max_statement_bytes_route_by_tables_or_fail_closed() {
    let topo = Topology::shared(Kind::Full);
    let proxy = Proxy::with(topo, |c| c.phase(4));
    let client = proxy.connect().await;
    let unparsable = |p: &Proxy| metric(&metrics(p), "pgdecomp_unparsable_statements_total", &[]);
    let before = unparsable(&proxy);
    let literal = "y".repeat(2 * MIB);
    let long_literal =
        format!("select inet_server_port(), length('{literal}'), (select count(*) from ci_builds)");
    let rows = client.simple_query(&long_literal).await.expect("literal");
    let row = first_row(&rows);
    assert_eq!(
        row[0],
        topo.ci_replica().to_string(),
        "ran on the CI replica"
    );
    assert_eq!(row[1], (2 * MIB).to_string());
    assert_eq!(unparsable(&proxy), before);
    let ones = "1, ".repeat(2 * MIB / 3);
    let dense = format!(
        "select inet_server_port(), (select count(*) from ci_builds) where 1 in ({ones} 1)"
    );
    let rows = client.simple_query(&dense).await.expect("dense");
    assert_eq!(
        first_row(&rows)[0],
        topo.main_primary().to_string(),
        "too long to parse: fails closed on the main primary"
    );
    assert_eq!(unparsable(&proxy), before + 1.0);
}
