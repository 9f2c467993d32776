//! Benchmark of the session step (client → framing → **session** → classify → route → pool →
//! server): what one execution of a prepared statement costs the proxy outside the sockets.
//! Plan the batch, attach, forward Bind/Describe/Execute/Sync (rename, route, count), scan the
//! server's replies back, release. The statement's classification travels with it, so no
//! parse and no cache lookup happen per execution.

use std::hint::black_box;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
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

criterion_group!(benches, bench);
criterion_main!(benches);
