//! Statements sent in a client_encoding other than UTF8: pgdecomp cannot read their text, so
//! they fail closed like unparsable SQL (the main primary, counted), proven by
//! `inet_server_port()` and `/metrics`, while the server still runs them in the client's
//! encoding.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Output;

use common::cluster::{Kind, Topology, DATABASE};
use common::proxy::{psql_command, Proxy, GITLAB};
use common::scrape::{metric, metrics};

fn topology() -> &'static Topology {
    Topology::shared(Kind::Full)
}

/// psql through the proxy with `sql` sent byte for byte, in `encoding`.
fn psql(proxy: &Proxy, encoding: &str, sql: &[u8]) -> Output {
    psql_command(proxy, GITLAB, DATABASE)
        .arg("-c")
        .arg(OsStr::from_bytes(sql))
        .env("PGCLIENTENCODING", encoding)
        .output()
        .expect("run psql")
}

/// The port of the server that ran `select inet_server_port(), …`.
fn port_of(out: &Output) -> u16 {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.split('|').next().unwrap_or_default().trim();
    first.parse().expect("a port")
}

fn unparsable(proxy: &Proxy) -> f64 {
    metric(&metrics(proxy), "pgdecomp_unparsable_statements_total", &[])
}

#[test]
fn a_latin1_statement_runs_on_the_main_primary_and_is_counted() {
    let topo = topology();
    let proxy = Proxy::with(topo, |c| c);
    // Phase 1: a read outside a transaction goes to the replica when pgdecomp can read it.
    let utf8 = psql(&proxy, "UTF8", "select inet_server_port(), 'é'".as_bytes());
    assert_eq!(port_of(&utf8), topo.main_replica());
    assert_eq!(unparsable(&proxy), 0.0);
    // The same read in Latin-1 ('é' is the byte 0xE9, not UTF-8).
    let latin1 = psql(&proxy, "LATIN1", b"select inet_server_port(), '\xe9'");
    assert_eq!(port_of(&latin1), topo.main_primary());
    assert_eq!(unparsable(&proxy), 1.0);
    assert!(
        latin1.stdout.ends_with(b"|\xe9\n"),
        "the server ran it in the client's encoding: {:?}",
        latin1.stdout
    );
}
