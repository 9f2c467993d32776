//! Reading a running pgdecomp's `/metrics` in tests: a minimal HTTP client and a series lookup.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::cluster::BOUND;
use super::proxy::Proxy;

/// The `/metrics` text of `proxy`, by a minimal HTTP/1.0 request.
pub fn metrics(proxy: &Proxy) -> String {
    let port = proxy.metrics_port().expect("metrics_listen configured");
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(BOUND)).expect("read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send metrics request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read metrics response");
    assert!(
        response.starts_with("HTTP/1.") && response.contains(" 200 "),
        "metrics response: {response}"
    );
    response
}

/// The value of series `name` whose labels include every `k="v"` in `labels` (0 when absent:
/// a counter vector shows no series before its first increment).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let wanted = n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
