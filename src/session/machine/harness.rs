//! Test support for the session machine: drives sessions the way relay.rs and pump.rs do,
//! against in-memory fake servers (one connection per target), without sockets.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::fake_pg::FakePg;
use super::{Ctx, Execution, Observer, Plan, Session};
use crate::classify::{Classifier, ClassifyCache};
use crate::config::Snapshot;
use crate::protocol::frame::{decode_frame, read_cstr, Frame};
use crate::protocol::Front;
use crate::route::{ConnectionKind, Group, Reason, Target};
use crate::server::ServerStatements;

use super::super::prepared::StatementRegistry;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A config snapshot for `phase` (a shipped file), every violation kind in `mode`.
pub fn snapshot(phase: u32, mode: &str) -> Arc<Snapshot> {
    snapshot_with(phase, mode, "transaction")
}

/// `snapshot` with a pool mode (`transaction` or `session`).
pub fn snapshot_with(phase: u32, mode: &str, pool_mode: &str) -> Arc<Snapshot> {
    let repo = env!("CARGO_MANIFEST_DIR");
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("pgdecomp-machine-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(format!("{repo}/phases/phase-{phase}.toml")).unwrap();
    let mut edited = String::new();
    let mut in_violations = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_violations = line == "[violations]";
        }
        match line.split_once(" = ") {
            Some((key, _)) if in_violations && !key.starts_with('#') => {
                edited.push_str(&format!("{key} = \"{mode}\"\n"))
            }
            _ => {
                edited.push_str(line);
                edited.push('\n');
            }
        }
    }
    // Shadow phases are named relative to the phase file.
    for n in 1..=7 {
        let file = format!("phase-{n}.toml");
        std::fs::copy(format!("{repo}/phases/{file}"), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("phase.toml"), edited).unwrap();
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\nauth_file = \"{repo}/config/userlist.txt\"\nphase_file = \"phase.toml\"\n\
         [pool]\npool_mode = \"{pool_mode}\"\n\
         [server]\nuser = \"gitlab\"\npassword = \"gitlab\"\n[databases.gitlabhq_production]\n\
         [clusters.main]\nprimary = \"127.0.0.1:1\"\n[clusters.ci]\nprimary = \"127.0.0.1:2\"\n"
    );
    std::fs::write(dir.join("pgdecomp.toml"), cfg).unwrap();
    let snap = crate::config::load(&dir.join("pgdecomp.toml")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Arc::new(snap)
}

/// Counts what the machine reports, as the metrics would.
#[derive(Default, Debug)]
pub struct Tally {
    pub executions: usize,
    pub violations: HashMap<&'static str, usize>,
    /// Executions refused.
    pub rejected: usize,
    pub decisions: Vec<(Target, Reason)>,
}

impl Observer for Tally {
    fn executed(&mut self, e: &Execution<'_>) {
        self.executions += 1;
        self.decisions.push((e.decision.target, e.decision.reason));
        for v in &e.decision.violations {
            *self.violations.entry(v.kind.label()).or_default() += 1;
        }
        self.rejected += usize::from(e.decision.rejected().is_some());
    }
}

impl Tally {
    pub fn count(&self, kind: &str) -> usize {
        self.violations.get(kind).copied().unwrap_or(0)
    }
}

/// The proxy side shared by clients: classification, statements and the fake servers.
pub struct World {
    pub snap: Arc<Snapshot>,
    pub cache: ClassifyCache,
    pub registry: StatementRegistry,
    pub servers: HashMap<Target, (FakePg, ServerStatements)>,
}

/// One client: its session, what it was told, and what was counted for it.
pub struct Client {
    pub s: Session,
    pub tally: Tally,
    pub replies: BytesMut,
    pending: VecDeque<Frame>,
}

impl World {
    pub fn new(phase: u32, mode: &str) -> Self {
        Self {
            snap: snapshot(phase, mode),
            cache: ClassifyCache::new(Classifier::gitlab_default(), 1000),
            registry: StatementRegistry::default(),
            servers: HashMap::new(),
        }
    }

    pub fn client(&self, db_config: Option<Group>) -> Client {
        let conn = db_config.map_or(ConnectionKind::Transparent, ConnectionKind::DbConfig);
        Client {
            s: Session::new(conn, self.snap.clone(), 50.0),
            tally: Tally::default(),
            replies: BytesMut::new(),
            pending: VecDeque::new(),
        }
    }

    pub fn server(&self, t: Target) -> Option<&FakePg> {
        self.servers.get(&t).map(|(pg, _)| pg)
    }

    /// Every statement the server for `t` executed.
    pub fn executed(&self, t: Target) -> Vec<String> {
        self.server(t)
            .map(|pg| pg.executed.clone())
            .unwrap_or_default()
    }

    /// Sends `frames` from `c` and runs until nothing more can happen, as the relay would.
    pub fn send(&mut self, c: &mut Client, frames: Vec<Frame>) {
        c.pending.extend(frames);
        for _ in 0..10_000 {
            if c.s.attached().is_none() {
                if !self.plan_next(c) {
                    return;
                }
            } else if !self.round_trip(c) {
                return;
            }
        }
        panic!("the session did not settle");
    }

    fn plan_next(&mut self, c: &mut Client) -> bool {
        let Some(first) = c.pending.pop_front() else {
            return false;
        };
        match first.front() {
            Front::Sync => {
                c.s.lone_sync(&mut c.replies);
                return true;
            }
            Front::Flush => return true,
            _ if c.s.skipping() => return true,
            _ => {}
        }
        let Some(unit) = take_unit(first, &mut c.pending) else {
            return false;
        };
        let mut ctx = Ctx {
            cache: &self.cache,
            registry: &self.registry,
            observer: &mut c.tally,
        };
        let plan = plan_detached(&mut c.s, &unit, &mut ctx, &mut c.replies);
        let Plan::Attach { target, .. } = plan else {
            return true;
        };
        let (_, stmts) = self.servers.entry(target).or_default();
        let out = send_unit(&mut c.s, plan, &unit, &mut ctx, stmts);
        self.exchange(c, target, out);
        true
    }

    fn round_trip(&mut self, c: &mut Client) -> bool {
        let target = c.s.attached().expect("attached");
        let (_, stmts) = self.servers.entry(target).or_default();
        let mut out = BytesMut::new();
        let mut ctx = Ctx {
            cache: &self.cache,
            registry: &self.registry,
            observer: &mut c.tally,
        };
        while c.s.may_forward(c.pending.front().map(|f| f.tag)) {
            let Some(f) = c.pending.pop_front() else {
                break;
            };
            c.s.client_frame_copied(&f, &mut ctx, stmts, &mut out);
        }
        if out.is_empty() {
            if c.s.may_release(false) {
                c.s.detach();
                return true;
            }
            return false;
        }
        self.exchange(c, target, out);
        true
    }

    fn exchange(&mut self, c: &mut Client, target: Target, mut out: BytesMut) {
        let (pg, stmts) = self.servers.entry(target).or_default();
        let mut replies = pg.feed(&mut out);
        let mut params = HashMap::new();
        c.s.scan(&mut replies, &mut c.replies, stmts, &mut params)
            .unwrap();
        if c.s.may_release(false) {
            c.s.detach();
        }
    }
}

/// The batch `first` starts, taken off `pending` up to its Sync or Flush (as the relay reads
/// it); `None` when Terminate comes before the batch ends.
pub fn take_unit(first: Frame, pending: &mut VecDeque<Frame>) -> Option<Vec<Frame>> {
    let single = first.front().is_single();
    let mut unit = vec![first];
    let ended =
        |u: &[Frame]| matches!(u.last().map(Frame::front), Some(Front::Sync | Front::Flush));
    while !single && !ended(&unit) {
        match pending.pop_front() {
            Some(f) if f.front() == Front::Terminate => return None,
            Some(f) => unit.push(f),
            None => break,
        }
    }
    Some(unit)
}

/// Plans `unit`, checking first that the machine writes nothing for a server while none is
/// attached.
pub fn plan_detached(
    s: &mut Session,
    unit: &[Frame],
    ctx: &mut Ctx,
    replies: &mut BytesMut,
) -> Plan {
    let mut detached_out = BytesMut::new();
    s.client_frame_copied(
        &unit[0],
        ctx,
        &mut ServerStatements::default(),
        &mut detached_out,
    );
    assert!(detached_out.is_empty(), "written for no server");
    s.plan(unit, ctx, replies)
}

/// Attaches as `plan` says and writes the batch (a held BEGIN first) for the server.
pub fn send_unit(
    s: &mut Session,
    plan: Plan,
    unit: &[Frame],
    ctx: &mut Ctx,
    stmts: &mut ServerStatements,
) -> BytesMut {
    let mut out = BytesMut::new();
    let Plan::Attach {
        target,
        group,
        hold_status,
        prepares,
    } = plan
    else {
        return out;
    };
    s.attach(target, group, hold_status, prepares);
    s.send_held(&mut out);
    for f in unit {
        s.client_frame_copied(f, ctx, stmts, &mut out);
    }
    s.batch_done();
    out
}

impl Client {
    /// The replies so far as `tag[:detail]` strings (SQLSTATE, status or command tag), drained.
    pub fn take(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(Some(f)) = decode_frame(&mut self.replies, 1 << 30) {
            let mut b = f.body();
            v.push(match f.tag {
                b'E' => {
                    let mut code = String::new();
                    while let Some((&field, rest)) = b.split_first() {
                        b = rest;
                        let val = read_cstr(&mut b).unwrap_or_default();
                        if field == b'C' {
                            code = String::from_utf8_lossy(val).into_owned();
                        }
                        if field == 0 {
                            break;
                        }
                    }
                    format!("E:{code}")
                }
                b'Z' => format!("Z:{}", b[0] as char),
                b'C' => format!(
                    "C:{}",
                    String::from_utf8_lossy(read_cstr(&mut b).unwrap_or_default())
                ),
                t => (t as char).to_string(),
            });
        }
        v
    }
}

/// Client message builders.
pub mod msg {
    use super::*;

    /// A message of type `tag` with `body`.
    pub fn frame(tag: u8, body: &[u8]) -> Frame {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_i32(4 + body.len() as i32);
        b.put_slice(body);
        Frame {
            tag,
            raw: b.freeze(),
        }
    }

    fn cstrs(parts: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p.as_bytes());
            v.push(0);
        }
        v
    }

    pub fn q(sql: &str) -> Frame {
        frame(b'Q', &cstrs(&[sql]))
    }
    pub fn parse(name: &str, sql: &str) -> Frame {
        let mut b = cstrs(&[name, sql]);
        b.extend_from_slice(&[0, 0]);
        frame(b'P', &b)
    }
    pub fn bind(stmt: &str) -> Frame {
        let mut b = cstrs(&["", stmt]);
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        frame(b'B', &b)
    }
    pub fn describe_s(name: &str) -> Frame {
        let mut b = vec![b'S'];
        b.extend(cstrs(&[name]));
        frame(b'D', &b)
    }
    pub fn describe_p() -> Frame {
        frame(b'D', &[b'P', 0])
    }
    pub fn execute() -> Frame {
        frame(b'E', &[0, 0, 0, 0, 0])
    }
    pub fn close_s(name: &str) -> Frame {
        let mut b = vec![b'S'];
        b.extend(cstrs(&[name]));
        frame(b'C', &b)
    }
    pub fn sync() -> Frame {
        frame(b'S', &[])
    }
    pub fn flush() -> Frame {
        frame(b'H', &[])
    }

    /// Parse (unnamed) + Bind + Describe + Execute + Sync: libpq's PQexecParams.
    pub fn exec_params(sql: &str) -> Vec<Frame> {
        vec![parse("", sql), bind(""), describe_p(), execute(), sync()]
    }
    /// Bind + Describe + Execute + Sync of a prepared statement: PQexecPrepared.
    pub fn exec_prepared(name: &str) -> Vec<Frame> {
        vec![bind(name), describe_p(), execute(), sync()]
    }
    /// Parse + Sync: PQprepare.
    pub fn prepare(name: &str, sql: &str) -> Vec<Frame> {
        vec![parse(name, sql), sync()]
    }
}
