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

fn bench(c: &mut Criterion) {
    let snap = snapshot();
    let cache = ClassifyCache::new(Classifier::gitlab_default(), 1000);
    let registry = StatementRegistry::default();
    let mut null = Null;
    let mut session = Session::new(ConnectionKind::Transparent, snap, 50.0);
    let mut server = ServerStatements::default();
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
    let mut out = BytesMut::with_capacity(4096);
    let mut client = BytesMut::with_capacity(4096);
    let mut input = BytesMut::with_capacity(4096);
    let mut params = std::collections::HashMap::new();
    let mut run = |unit: &[Frame], server_reply: &[u8]| {
        let mut ctx = Ctx {
            cache: &cache,
            registry: &registry,
            observer: &mut null,
        };
        if let Plan::Attach {
            target,
            group,
            hold_status,
            prepares,
        } = session.plan(unit, &mut ctx, &mut client)
        {
            session.attach(target, group, hold_status, prepares);
            for f in unit {
                session.client_frame_copied(f, &mut ctx, &mut server, &mut out);
            }
            input.extend_from_slice(server_reply);
            session
                .scan(&mut input, &mut client, &mut server, &mut params)
                .unwrap();
            assert!(session.may_release(false));
            session.detach();
        }
        out.clear();
        client.clear();
    };
    let mut parse_reply = BytesMut::new();
    message(&mut parse_reply, b'1', &[]);
    message(&mut parse_reply, b'Z', b"I");
    run(&prepare, &parse_reply);
    c.bench_function(
        "session: one prepared execution (plan, route, forward, scan, release)",
        |b| b.iter(|| run(black_box(&execute), &reply)),
    );
}

/// A pgbench -S transaction in the simple protocol, from the client's bytes: frame decode,
/// plan (normalize, classification cache, route), forward, and the scan of the server's four
/// reply messages back to client bytes.
fn simple_query(c: &mut Criterion) {
    let cache = ClassifyCache::new(Classifier::gitlab_default(), 1000);
    let registry = StatementRegistry::default();
    let mut null = Null;
    let mut session = Session::new(ConnectionKind::Transparent, snapshot(), 50.0);
    let mut server = ServerStatements::default();
    let mut request = BytesMut::new();
    message(
        &mut request,
        b'Q',
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;\0",
    );
    let mut reply = BytesMut::new();
    let mut desc = b"\0\x01abalance\0".to_vec();
    desc.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]);
    message(&mut reply, b'T', &desc);
    message(&mut reply, b'D', b"\0\x01\0\0\0\x040000");
    message(&mut reply, b'C', b"SELECT 1\0");
    message(&mut reply, b'Z', b"I");
    let (mut rbuf, mut input) = (BytesMut::with_capacity(8192), BytesMut::with_capacity(8192));
    let (mut out, mut client) = (BytesMut::with_capacity(8192), BytesMut::with_capacity(8192));
    let mut params = std::collections::HashMap::new();
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(5));
    group.bench_function(
        "simple -S transaction, per message (1 request, 4 replies)",
        |b| {
            b.iter(|| {
                rbuf.extend_from_slice(black_box(&request));
                let unit = [decode_frame(&mut rbuf, 1 << 20).unwrap().unwrap()];
                let mut ctx = Ctx {
                    cache: &cache,
                    registry: &registry,
                    observer: &mut null,
                };
                if let Plan::Attach {
                    target,
                    group,
                    hold_status,
                    prepares,
                } = session.plan(&unit, &mut ctx, &mut client)
                {
                    session.attach(target, group, hold_status, prepares);
                    session.client_frame(&unit[0], &mut ctx, &mut server, &mut out);
                    input.extend_from_slice(&reply);
                    session
                        .scan(&mut input, &mut client, &mut server, &mut params)
                        .unwrap();
                    assert!(session.may_release(false));
                    session.detach();
                }
                out.clear();
                client.clear();
            })
        },
    );
    group.finish();
}

/// The reply scan alone on a result of 100 rows: what each server message costs on its way
/// back (the bytes are forwarded raw; the scan only finds message boundaries and the state).
fn reply_scan(c: &mut Criterion) {
    let cache = ClassifyCache::new(Classifier::gitlab_default(), 1000);
    let registry = StatementRegistry::default();
    let mut null = Null;
    let mut session = Session::new(ConnectionKind::Transparent, snapshot(), 50.0);
    let mut server = ServerStatements::default();
    let mut request = BytesMut::new();
    message(
        &mut request,
        b'Q',
        b"SELECT id, name FROM projects LIMIT 100\0",
    );
    let unit = frames(&request);
    let mut reply = BytesMut::new();
    let mut desc = b"\0\x02".to_vec();
    for col in ["id", "name"] {
        desc.extend_from_slice(col.as_bytes());
        desc.extend_from_slice(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ]);
    }
    message(&mut reply, b'T', &desc);
    for _ in 0..100 {
        message(&mut reply, b'D', b"\0\x02\0\0\0\x0512345\0\0\0\x08project1");
    }
    message(&mut reply, b'C', b"SELECT 100\0");
    message(&mut reply, b'Z', b"I");
    let (mut input, mut out, mut client) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
    let mut params = std::collections::HashMap::new();
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(103));
    group.bench_function("reply scan, per server message (100-row result)", |b| {
        b.iter(|| {
            let mut ctx = Ctx {
                cache: &cache,
                registry: &registry,
                observer: &mut null,
            };
            if let Plan::Attach {
                target,
                group,
                hold_status,
                prepares,
            } = session.plan(&unit, &mut ctx, &mut client)
            {
                session.attach(target, group, hold_status, prepares);
                session.client_frame(&unit[0], &mut ctx, &mut server, &mut out);
                input.extend_from_slice(black_box(&reply));
                session
                    .scan(&mut input, &mut client, &mut server, &mut params)
                    .unwrap();
                assert!(session.may_release(false));
                session.detach();
            }
            out.clear();
            client.clear();
        })
    });
    group.finish();
}

criterion_group!(benches, bench, simple_query, reply_scan);
criterion_main!(benches);
