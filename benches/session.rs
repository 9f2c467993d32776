//! Benchmark of the session step (client → framing → **session** → classify → route → pool →
//! server): what one execution of a prepared statement costs the proxy outside the sockets.
//! Plan the batch, attach, forward Bind/Describe/Execute/Sync (rename, route, count), scan the
//! server's replies back, release. The statement's classification travels with it, so no
//! parse and no cache lookup happen per execution.

use std::hint::black_box;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgdecomp::classify::{Classifier, ClassifyCache};
use pgdecomp::config::Snapshot;
use pgdecomp::protocol::{decode_frame, Frame};
use pgdecomp::route::ConnectionKind;
use pgdecomp::server::ServerStatements;
use pgdecomp::session::{Ctx, Execution, Observer, Plan, Session, StatementRegistry};

struct Null;

impl Observer for Null {
    fn executed(&mut self, e: &Execution<'_>) {
        black_box(e.decision);
    }
}

fn snapshot() -> Arc<Snapshot> {
    let repo = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("pgdecomp-bench-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\nauth_file = \"{repo}/config/userlist.txt\"\n\
         phase_file = \"{repo}/phases/phase-4.toml\"\n[server]\nuser = \"gitlab\"\npassword = \"gitlab\"\n\
         [databases.gitlabhq_production]\n[clusters.main]\nprimary = \"127.0.0.1:1\"\n\
         [clusters.ci]\nprimary = \"127.0.0.1:2\"\n"
    );
    std::fs::write(dir.join("pgdecomp.toml"), cfg).unwrap();
    let snap = pgdecomp::config::load(&dir.join("pgdecomp.toml")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Arc::new(snap)
}

fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    std::iter::from_fn(|| decode_frame(&mut buf, 1 << 20).unwrap()).collect()
}

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(4 + body.len() as i32);
    out.put_slice(body);
}

/// One session with its server side and buffers: runs a planned request to its release.
struct Relay {
    cache: ClassifyCache,
    registry: StatementRegistry,
    session: Session,
    server: ServerStatements,
    out: BytesMut,
    client: BytesMut,
    input: BytesMut,
    params: std::collections::HashMap<String, String>,
}

impl Relay {
    fn new() -> Self {
        Self {
            cache: ClassifyCache::new(Classifier::gitlab_default(), 1000),
            registry: StatementRegistry::default(),
            session: Session::new(ConnectionKind::Transparent, snapshot(), 50.0),
            server: ServerStatements::default(),
            out: BytesMut::with_capacity(8192),
            client: BytesMut::with_capacity(8192),
            input: BytesMut::with_capacity(8192),
            params: std::collections::HashMap::new(),
        }
    }

    /// Plan, attach, forward `unit`, scan `reply` back, release.
    fn transaction(&mut self, unit: &[Frame], reply: &[u8]) {
        let mut null = Null;
        let mut ctx = Ctx {
            cache: &self.cache,
            registry: &self.registry,
            observer: &mut null,
        };
        let s = &mut self.session;
        if let Plan::Attach {
            target,
            group,
            hold_status,
            prepares,
        } = s.plan(unit, &mut ctx, &mut self.client)
        {
            s.attach(target, group, hold_status, prepares);
            for f in unit {
                s.client_frame_copied(f, &mut ctx, &mut self.server, &mut self.out);
            }
            self.input.extend_from_slice(reply);
            s.scan(
                &mut self.input,
                &mut self.client,
                &mut self.server,
                &mut self.params,
            )
            .unwrap();
            assert!(s.may_release(false));
            s.detach();
        }
        self.out.clear();
        self.client.clear();
    }
}

fn bench(c: &mut Criterion) {
    let mut relay = Relay::new();
    let sql = "INSERT INTO ci_builds (project_id, status) VALUES ($1, $2)";
    let mut raw = BytesMut::new();
    let mut parse = b"s1\0".to_vec();
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    message(&mut raw, b'P', &parse);
    message(&mut raw, b'S', &[]);
    let prepare = frames(&raw);
    raw.clear();
    message(
        &mut raw,
        b'B',
        b"\0s1\0\0\0\0\x02\0\0\0\x011\0\0\0\x07running\0\0",
    );
    message(&mut raw, b'D', b"P\0");
    message(&mut raw, b'E', b"\0\0\0\0\0");
    message(&mut raw, b'S', &[]);
    let execute = frames(&raw);
    let mut reply = BytesMut::new();
    message(&mut reply, b'2', &[]);
    message(&mut reply, b'n', &[]);
    message(&mut reply, b'C', b"INSERT 0 1\0");
    message(&mut reply, b'Z', b"I");
    let mut parse_reply = BytesMut::new();
    message(&mut parse_reply, b'1', &[]);
    message(&mut parse_reply, b'Z', b"I");
    relay.transaction(&prepare, &parse_reply);
    c.bench_function(
        "session: one prepared execution (plan, route, forward, scan, release)",
        |b| b.iter(|| relay.transaction(black_box(&execute), &reply)),
    );
}

/// A RowDescription of `columns` (text, no table).
fn row_description(columns: &[&str]) -> Vec<u8> {
    let mut desc = (columns.len() as u16).to_be_bytes().to_vec();
    for col in columns {
        desc.extend_from_slice(col.as_bytes());
        desc.push(0);
        // table oid, attnum, type oid (text), typlen, typmod, format
        desc.extend_from_slice(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ]);
    }
    desc
}

/// A pgbench -S transaction in the simple protocol, from the client's bytes: frame decode,
/// plan (normalize, classification cache, route), forward, and the scan of the server's four
/// reply messages back to client bytes.
fn simple_query(c: &mut Criterion) {
    let mut relay = Relay::new();
    let mut request = BytesMut::new();
    message(
        &mut request,
        b'Q',
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;\0",
    );
    let mut reply = BytesMut::new();
    message(&mut reply, b'T', &row_description(&["abalance"]));
    message(&mut reply, b'D', b"\0\x01\0\0\0\x040000");
    message(&mut reply, b'C', b"SELECT 1\0");
    message(&mut reply, b'Z', b"I");
    let mut rbuf = BytesMut::with_capacity(8192);
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(5));
    group.bench_function(
        "simple -S transaction, per message (1 request, 4 replies)",
        |b| {
            b.iter(|| {
                rbuf.extend_from_slice(black_box(&request));
                let unit = [decode_frame(&mut rbuf, 1 << 20).unwrap().unwrap()];
                relay.transaction(&unit, &reply);
            })
        },
    );
    group.finish();
}

/// The reply scan on a result of 100 rows: what each server message costs on its way back
/// (the bytes are forwarded raw; the scan only finds message boundaries and the state).
fn reply_scan(c: &mut Criterion) {
    let mut relay = Relay::new();
    let mut request = BytesMut::new();
    message(
        &mut request,
        b'Q',
        b"SELECT id, name FROM projects LIMIT 100\0",
    );
    let unit = frames(&request);
    let mut reply = BytesMut::new();
    message(&mut reply, b'T', &row_description(&["id", "name"]));
    for _ in 0..100 {
        message(&mut reply, b'D', b"\0\x02\0\0\0\x0512345\0\0\0\x08project1");
    }
    message(&mut reply, b'C', b"SELECT 100\0");
    message(&mut reply, b'Z', b"I");
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(103));
    group.bench_function("reply scan, per server message (100-row result)", |b| {
        b.iter(|| relay.transaction(&unit, black_box(&reply)))
    });
    group.finish();
}

criterion_group!(benches, bench, simple_query, reply_scan);
criterion_main!(benches);
