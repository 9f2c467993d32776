//! Fuzz targets, beside the pipeline: one `pub fn` per parser or state machine that meets
//! untrusted bytes (framing, the startup packet, SCRAM, the classifier, the config parser and
//! the session machine). Each takes arbitrary bytes and must never panic; a panic is a finding.
//! The cargo-fuzz crate in `fuzz/` (long runs) and `tests/fuzz_smoke.rs` (short runs in
//! scripts/test) share these bodies. Built only with the `fuzzing` feature.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::auth::scram::{ScramExchange, ScramVerifier};
use crate::auth::{Secret, UserList};
use crate::classify::{Classifier, ClassifyCache, Dictionary, SchemaRules};
use crate::config::{RawConfig, Snapshot};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::{decode_frame, peek_header, read_cstr, Frame, FrameError};
use crate::protocol::frontend;
use crate::protocol::startup::{decode_startup, encode_cancel, encode_startup, StartupRequest};
use crate::protocol::Front;
use crate::route::{ConnectionKind, Group, Phase, Target as RouteTarget};
use crate::server::ServerStatements;
use crate::session::harness::msg;
use crate::session::harness::{Tally, World};
use crate::session::{Ctx, Plan, Session};

/// A target body: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, for runners that loop over them.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("startup", startup),
    ("scram", scram),
    ("classify", classify),
    ("config", config),
    ("session", session),
];

/// Reads fuzz input as a stream of small decisions; an exhausted input reads as zeros.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A chunk whose length is the next byte.
    fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.bytes(n)
    }

    /// Everything up to the next NUL (consumed) or the end.
    fn until_nul(&mut self) -> &'a [u8] {
        match self.data.iter().position(|&b| b == 0) {
            Some(i) => {
                let head = &self.data[..i];
                self.data = &self.data[i + 1..];
                head
            }
            None => self.bytes(self.data.len()),
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}

fn tagged(tag: u8, body: &[u8]) -> Frame {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(tag);
    b.put_i32(4 + body.len() as i32);
    b.put_slice(body);
    Frame {
        tag,
        raw: b.freeze(),
    }
}

// === frame ===

fn decode_all(buf: &mut BytesMut, max: usize) -> (Vec<Frame>, Option<FrameError>) {
    let mut frames = Vec::new();
    loop {
        match decode_frame(buf, max) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// Framing: `decode_frame`/`peek_header` over a byte stream, whole and in pieces (the same
/// frames either way), then every zero-copy view the session takes of a frame.
pub fn frame(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = [64, 1024, 1 << 20, 1 << 28][usize::from(r.byte() % 4)];
    let step = usize::from(r.byte()) + 1;
    let stream = r.rest();
    if let Ok(Some((tag, total))) = peek_header(stream, max) {
        assert_eq!(tag, stream[0]);
        assert!(total >= 5 && total <= max + 1);
    }
    let (frames, end) = decode_all(&mut BytesMut::from(stream), max);
    let mut buf = BytesMut::new();
    let (mut pieces, mut piece_end) = (Vec::new(), None);
    for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        let (mut got, e) = decode_all(&mut buf, max);
        pieces.append(&mut got);
        if e.is_some() {
            piece_end = e;
            break;
        }
    }
    assert_eq!(frames, pieces, "split reads decode differently");
    assert_eq!(end, piece_end);
    for f in &frames {
        assert_eq!(f.raw[0], f.tag);
        let len = i32::from_be_bytes([f.raw[1], f.raw[2], f.raw[3], f.raw[4]]);
        assert_eq!(len as usize + 1, f.raw.len());
        views(f);
    }
}

fn views(f: &Frame) {
    let _ = f.front();
    let _ = frontend::query_sql(f);
    let _ = frontend::parse_view(f);
    let _ = frontend::bind_statement(f);
    let _ = frontend::target_of(f);
    let mut out = BytesMut::new();
    if frontend::write_bind_renamed(f, "pgdecomp_1", &mut out).is_some() {
        let renamed = decode_frame(&mut out, usize::MAX)
            .expect("a renamed Bind is well framed")
            .expect("a renamed Bind is complete");
        assert_eq!(frontend::bind_statement(&renamed), Some(&b"pgdecomp_1"[..]));
        assert!(out.is_empty());
    }
    let body = f.body();
    let _ = backend::parse_parameter_status(body);
    let _ = backend::parse_data_row(body);
    let _ = backend::parse_error_fields(body);
    let mut copy = body.to_vec();
    let fatal = backend::fatal_severity(&mut copy, true);
    assert_eq!(copy.len(), body.len());
    if fatal {
        assert!(!backend::fatal_severity(&mut copy, false));
    }
    let mut rest = body;
    while read_cstr(&mut rest).is_some() {}
}

// === startup ===

/// The first packet of a connection: decoded whole and byte by byte alike, and a decoded
/// StartupMessage or CancelRequest re-encodes to the same request.
pub fn startup(data: &[u8]) {
    let mut whole = BytesMut::from(data);
    let first = decode_startup(&mut whole);
    let mut buf = BytesMut::new();
    let mut split = Ok(None);
    for &b in data {
        buf.put_u8(b);
        split = decode_startup(&mut buf);
        if !matches!(split, Ok(None)) {
            break;
        }
    }
    assert_eq!(
        first, split,
        "a packet split into bytes decodes differently"
    );
    match first {
        Ok(Some(StartupRequest::Startup(p))) => {
            let _ = p.needs_negotiation();
            let _ = p.get("user");
            let pairs: Vec<(&str, &str)> = p
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut out = BytesMut::new();
            encode_startup(&pairs, &mut out);
            let again = decode_startup(&mut out);
            let Ok(Some(StartupRequest::Startup(q))) = again else {
                panic!("re-encoded startup does not decode: {again:?}");
            };
            let expected: BTreeMap<_, _> = p.params.iter().cloned().collect();
            let got: BTreeMap<_, _> = q.params.iter().cloned().collect();
            assert_eq!(expected, got);
        }
        Ok(Some(StartupRequest::Cancel { pid, secret })) => {
            let mut out = BytesMut::new();
            encode_cancel(pid, secret, &mut out);
            assert_eq!(
                decode_startup(&mut out),
                Ok(Some(StartupRequest::Cancel { pid, secret }))
            );
        }
        _ => {}
    }
}

// === scram ===

const SCRAM_PASSWORD: &str = "pencil";

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// RFC 5802 Hi() with one iteration, so a full exchange costs microseconds.
fn salted(password: &[u8], salt: &[u8]) -> [u8; 32] {
    let mut msg = salt.to_vec();
    msg.extend_from_slice(&1u32.to_be_bytes());
    hmac(password, &msg)
}

fn fast_verifier() -> &'static ScramVerifier {
    static V: OnceLock<ScramVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let salt = b"fuzz-salt".to_vec();
        let sp = salted(SCRAM_PASSWORD.as_bytes(), &salt);
        ScramVerifier {
            iterations: 1,
            stored_key: Sha256::digest(hmac(&sp, b"Client Key")).into(),
            server_key: hmac(&sp, b"Server Key"),
            salt,
        }
    })
}

/// Overwrites, truncates or extends `msg` as the input says; true when it changed.
fn mutate(msg: &mut Vec<u8>, r: &mut Reader) -> bool {
    let mut changed = false;
    for _ in 0..usize::from(r.byte() % 4) {
        let at = usize::from(r.byte());
        let b = r.byte();
        match r.byte() % 3 {
            0 if !msg.is_empty() => {
                let at = at % msg.len();
                changed |= msg[at] != b;
                msg[at] = b;
            }
            1 => {
                changed |= at < msg.len();
                msg.truncate(at);
            }
            _ => {
                msg.insert(at.min(msg.len()), b);
                changed = true;
            }
        }
    }
    changed
}

/// SCRAM: auth-file verifiers, then client-first and client-final messages against the server
/// side. Mode 0 sends raw bytes; mode 1 runs a correct client (an independent implementation
/// here) whose messages are then mutated: unmutated, the right password must succeed and a
/// wrong one fail.
pub fn scram(data: &[u8]) {
    let mut r = Reader::new(data);
    let mode = r.byte() % 2;
    let userlist = String::from_utf8_lossy(r.until_nul());
    let mut verifier = fast_verifier().clone();
    if let Ok(list) = UserList::parse(&userlist, "fuzz") {
        if let Some(Secret::Scram(v)) = list.get("u").map(|e| &e.secret) {
            verifier = v.clone();
        }
    }
    let server_nonce = "srvNONCE+/0123456789";
    if mode == 0 {
        let first = r.until_nul();
        let last = r.rest();
        if let Ok((ex, _)) = ScramExchange::start(first, &verifier, server_nonce) {
            let _ = ex.finish(last, &verifier, "u");
        }
        return;
    }
    let verifier = fast_verifier();
    let password = match r.byte() % 4 {
        0 => r.chunk().to_vec(),
        _ => SCRAM_PASSWORD.as_bytes().to_vec(),
    };
    let nonce: String = r
        .chunk()
        .iter()
        .map(|b| char::from(b'!' + b % 90))
        .filter(|&c| c != ',')
        .collect();
    let nonce = if nonce.is_empty() {
        "cNonce".into()
    } else {
        nonce
    };
    let bare = format!("n=,r={nonce}");
    let mut first = format!("n,,{bare}").into_bytes();
    let mut changed = mutate(&mut first, &mut r);
    let Ok((ex, server_first)) = ScramExchange::start(&first, verifier, server_nonce) else {
        assert!(changed, "a well-formed client-first was refused");
        return;
    };
    let Some(full_nonce) = server_first
        .split(',')
        .next()
        .and_then(|a| a.strip_prefix("r="))
    else {
        panic!("server-first without a nonce: {server_first}");
    };
    let without_proof = format!("c=biws,r={full_nonce}");
    let auth = format!("{bare},{server_first},{without_proof}");
    let sp = salted(&password, &verifier.salt);
    let client_key = hmac(&sp, b"Client Key");
    let signature = hmac(&Sha256::digest(client_key), auth.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let mut last = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
    changed |= mutate(&mut last, &mut r);
    let result = ex.finish(&last, verifier, "u");
    if !changed {
        let right = password == SCRAM_PASSWORD.as_bytes();
        assert_eq!(result.is_ok(), right, "password right: {right}");
    }
}

// === classify ===

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(Classifier::gitlab_default)
}

/// The classifier (sqlparser and the fallback lexer behind it) on arbitrary SQL text.
pub fn classify(data: &[u8]) {
    let sql = String::from_utf8_lossy(data);
    let c = classifier();
    let _ = c.classify(&sql);
    let _ = c.classify_each(&sql);
    let _ = crate::classify::cache_key(&sql);
}

// === config ===

/// Files a fuzzed config may name: copies of the shipped ones in a private directory.
fn config_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = std::env::temp_dir().join(format!("pgdecomp-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        for sub in ["config", "phases"] {
            let entries = std::fs::read_dir(repo.join(sub)).expect("the repository is readable");
            for e in entries.flatten() {
                let _ = std::fs::copy(e.path(), dir.join(e.file_name()));
            }
        }
        dir
    })
}

/// A fuzzed config may only name plain file names (resolved in `config_dir`), never a path
/// that reaches devices or the rest of the machine.
fn names_are_local(raw: &RawConfig) -> bool {
    let names = [
        Some(&raw.auth_file),
        Some(&raw.phase_file),
        raw.classify.dictionary.as_ref(),
        raw.classify.schema_rules.as_ref(),
        raw.client_tls_cert_file.as_ref(),
        raw.client_tls_key_file.as_ref(),
        raw.server_tls_ca_file.as_ref(),
    ];
    names.into_iter().flatten().all(|n| {
        !n.is_empty() && !n.contains(['/', '\\']) && n != "." && n != ".." && !n.contains('\0')
    })
}

/// The config parser: TOML into `RawConfig`, then validation into a `Snapshot` against the
/// shipped auth file, dictionaries and phases. The same text also goes through the other
/// text formats a config references (phase, schema rules, dictionary TSV, auth file).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = Phase::from_toml(&text);
    let _ = SchemaRules::from_toml(&text);
    let _ = Dictionary::from_tsv(&text);
    let _ = UserList::parse(&text, "fuzz");
    let Ok(raw) = toml::from_str::<RawConfig>(&text) else {
        return;
    };
    if !names_are_local(&raw) {
        return;
    }
    if let Ok(snap) = Snapshot::from_raw(raw, &config_dir().join("pgdecomp.toml")) {
        let _ = snap.summary();
    }
}

/// The shipped example config with its paths made local to `config_dir`: a seed.
pub fn config_seed() -> String {
    let text = include_str!("../config/pgdecomp.toml");
    text.replace("../phases/", "")
}

// === session ===

/// A config snapshot for the session target: shipped phase `phase` with every violation kind
/// in `mode`, in transaction or session pooling. Built once per combination.
fn session_snapshot(phase: u8, enforce: bool, session_pool: bool) -> Arc<Snapshot> {
    type Key = (u8, bool, bool);
    static SNAPS: OnceLock<Mutex<HashMap<Key, Arc<Snapshot>>>> = OnceLock::new();
    let snaps = SNAPS.get_or_init(Default::default);
    let key = (phase, enforce, session_pool);
    let mut map = snaps.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(key)
        .or_insert_with(|| build_snapshot(phase, enforce, session_pool))
        .clone()
}

fn build_snapshot(phase: u8, enforce: bool, session_pool: bool) -> Arc<Snapshot> {
    let repo = env!("CARGO_MANIFEST_DIR");
    let mode = if enforce { "enforce" } else { "observe" };
    let dir = std::env::temp_dir().join(format!(
        "pgdecomp-fuzz-session-{}-{phase}-{mode}-{session_pool}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    let text = std::fs::read_to_string(format!("{repo}/phases/phase-{phase}.toml"))
        .expect("shipped phase file");
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
        let _ = std::fs::copy(format!("{repo}/phases/{file}"), dir.join(file));
    }
    std::fs::write(dir.join("phase.toml"), edited).expect("temp dir is writable");
    let pool_mode = if session_pool {
        "session"
    } else {
        "transaction"
    };
    let cfg = format!(
        "listen = \"127.0.0.1:0\"\nauth_file = \"{repo}/config/userlist.txt\"\nphase_file = \"phase.toml\"\n\
         [pool]\npool_mode = \"{pool_mode}\"\n\
         [server]\nuser = \"gitlab\"\npassword = \"gitlab\"\n[databases.gitlabhq_production]\n\
         [clusters.main]\nprimary = \"127.0.0.1:1\"\n[clusters.ci]\nprimary = \"127.0.0.1:2\"\n"
    );
    std::fs::write(dir.join("pgdecomp.toml"), cfg).expect("temp dir is writable");
    let snap = crate::config::load(&dir.join("pgdecomp.toml")).expect("the fuzz config is valid");
    let _ = std::fs::remove_dir_all(&dir);
    Arc::new(snap)
}

/// Statements the session target sends: transaction control, both groups, cross-group
/// statements, session state, prepared statements, COPY, and the proxy's own error text.
const SQL: &[&str] = &[
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "START TRANSACTION READ ONLY",
    "SAVEPOINT s",
    "ROLLBACK TO SAVEPOINT s",
    "RELEASE s",
    "SELECT 1",
    "SELECT 1 FROM projects",
    "SELECT * FROM ci_builds",
    "SELECT * FROM projects JOIN ci_builds ON true",
    "INSERT INTO projects (id) VALUES (1)",
    "UPDATE ci_builds SET id = 2",
    "DELETE FROM projects",
    "INSERT INTO ci_builds SELECT * FROM projects",
    "SET search_path = public",
    "SET LOCAL statement_timeout = 1",
    "RESET ALL",
    "DISCARD ALL",
    "PREPARE p AS SELECT 1 FROM ci_builds",
    "EXECUTE p",
    "DEALLOCATE p",
    "DEALLOCATE ALL",
    "LISTEN x",
    "COPY ci_builds FROM STDIN",
    "COPY projects TO STDOUT",
    "SELECT nextval('x')",
    "SELECT pg_advisory_lock(1)",
    "BEGIN; SELECT 1 FROM ci_builds; COMMIT",
    "SELECT 1 FROM projects; SELECT 1 FROM ci_builds",
    "",
    ";",
    "WITH x AS (DELETE FROM ci_builds RETURNING 1) SELECT * FROM x",
    "LOCK TABLE projects",
    "SELECT * FROM projects FOR UPDATE",
    "DO $pgdecomp$ BEGIN RAISE EXCEPTION USING ERRCODE = '26000'; END $pgdecomp$",
    "CREATE TABLE t (id int)",
    "TRUNCATE ci_builds",
    "SHOW search_path",
    "SELECT 1 FROM unknown_table",
    "END",
    "ABORT",
    "COMMIT AND CHAIN",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
];
const NAMES: &[&str] = &["", "a", "b", "pgdecomp_1"];

/// How the next server reply is tampered with before the session reads it.
#[derive(Clone, Debug)]
enum Fault {
    None,
    /// Replaced by these bytes.
    Replace(Vec<u8>),
    /// These bytes appended.
    Append(Vec<u8>),
    /// Only the first n bytes arrive (the server then hangs).
    Truncate(usize),
    /// Arrives in two reads split at n.
    Split(usize),
}

/// One client message from the input: a driver message, or a raw frame of any type.
fn client_message(r: &mut Reader) -> Frame {
    let sql = |r: &mut Reader| -> String {
        let i = usize::from(r.byte());
        match SQL.get(i) {
            Some(s) => (*s).to_string(),
            None => String::from_utf8_lossy(r.chunk()).into_owned(),
        }
    };
    let name = |r: &mut Reader| NAMES[usize::from(r.byte()) % NAMES.len()];
    match r.byte() % 14 {
        0 | 1 => msg::q(&sql(r)),
        2 => msg::parse(name(r), &sql(r)),
        3 => msg::bind(name(r)),
        4 => msg::describe_s(name(r)),
        5 => msg::describe_p(),
        6 => msg::execute(),
        7 => msg::close_s(name(r)),
        8 | 9 => msg::sync(),
        10 => msg::flush(),
        11 => tagged(b'C', &[b'P', 0]),
        12 => {
            let tag = [b'd', b'c', b'f', b'F', b'X', b'p'][usize::from(r.byte()) % 6];
            tagged(tag, r.chunk())
        }
        _ => {
            let tag = r.byte();
            tagged(tag, r.chunk())
        }
    }
}

/// Server messages a misbehaving or surprising server might add.
fn server_bytes(r: &mut Reader) -> Vec<u8> {
    let mut out = BytesMut::new();
    match r.byte() % 8 {
        0 => backend::ready_for_query(r.byte(), &mut out),
        1 => PgError::fatal("57P01", "terminating connection").encode(&mut out),
        2 => PgError::error("40001", "could not serialize").encode(&mut out),
        3 => backend::parameter_status("search_path", "x", &mut out),
        4 => backend::command_complete("SELECT 1", &mut out),
        5 => backend::empty(
            [b'1', b'2', b'3', b'n', b'I', b's', b'G', b'H'][usize::from(r.byte() % 8)],
            &mut out,
        ),
        6 => {
            let tag = r.byte();
            out.extend_from_slice(&tagged(tag, r.chunk()).raw);
        }
        _ => out.extend_from_slice(r.chunk()),
    }
    out.to_vec()
}

/// Drives one session the way relay.rs and pump.rs do, against fake servers whose replies the
/// input may tamper with.
struct Driver {
    world: World,
    s: Session,
    tally: Tally,
    replies: BytesMut,
    pending: std::collections::VecDeque<Frame>,
    fault: Fault,
    place_fails: bool,
    tampered: bool,
    gone: bool,
}

impl Driver {
    /// Runs until nothing more can happen, as the relay would.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let progressed = if self.gone {
                false
            } else if self.s.attached().is_none() {
                self.plan_next()
            } else {
                self.round_trip()
            };
            if !progressed {
                return;
            }
        }
        panic!("the session did not settle");
    }

    fn plan_next(&mut self) -> bool {
        let Some(first) = self.pending.pop_front() else {
            return false;
        };
        match first.front() {
            Front::Terminate => {
                self.gone = true;
                return false;
            }
            Front::Sync => {
                self.s.lone_sync(&mut self.replies);
                return true;
            }
            Front::Flush => return true,
            _ if self.s.skipping() => return true,
            _ => {}
        }
        let single = first.front().is_single();
        let mut unit = vec![first];
        while !single
            && !matches!(
                unit.last().map(Frame::front),
                Some(Front::Sync | Front::Flush)
            )
        {
            match self.pending.pop_front() {
                Some(f) if f.front() == Front::Terminate => {
                    self.gone = true;
                    return false;
                }
                Some(f) => unit.push(f),
                None => break,
            }
        }
        let mut ctx = Ctx {
            cache: &self.world.cache,
            registry: &self.world.registry,
            observer: &mut self.tally,
        };
        let mut detached_out = BytesMut::new();
        self.s.client_frame(
            &unit[0],
            &mut ctx,
            &mut ServerStatements::default(),
            &mut detached_out,
        );
        assert!(detached_out.is_empty(), "written for no server");
        let Plan::Attach {
            target,
            group,
            hold_status,
            prepares,
        } = self.s.plan(&unit, &mut ctx, &mut self.replies)
        else {
            return true;
        };
        if std::mem::take(&mut self.place_fails) {
            let synced = matches!(
                unit.last().map(Frame::front),
                Some(Front::Query | Front::FunctionCall | Front::Sync)
            );
            let e = PgError::error("08006", "no server connection (fuzz)");
            self.s.refused_locally(e, synced, &mut self.replies);
            return true;
        }
        self.s.attach(target, group, hold_status, prepares);
        let (_, stmts) = self.world.servers.entry(target).or_default();
        let mut out = BytesMut::new();
        self.s.send_held(&mut out);
        for f in &unit {
            self.s.client_frame(f, &mut ctx, stmts, &mut out);
        }
        self.s.batch_done();
        self.exchange(target, out);
        true
    }

    fn round_trip(&mut self) -> bool {
        let Some(target) = self.s.attached() else {
            return false;
        };
        let (_, stmts) = self.world.servers.entry(target).or_default();
        let mut out = BytesMut::new();
        let mut ctx = Ctx {
            cache: &self.world.cache,
            registry: &self.world.registry,
            observer: &mut self.tally,
        };
        while self.s.may_forward(self.pending.front().map(|f| f.tag)) {
            let Some(f) = self.pending.pop_front() else {
                break;
            };
            if f.front() == Front::Terminate {
                // The client left with a server attached: the pump ends and detaches.
                self.s.detach();
                self.gone = true;
                return false;
            }
            self.s.client_frame(&f, &mut ctx, stmts, &mut out);
        }
        if out.is_empty() {
            if self.s.may_release(false) {
                self.s.detach();
                return true;
            }
            return false;
        }
        self.exchange(target, out);
        true
    }

    fn exchange(&mut self, target: RouteTarget, mut out: BytesMut) {
        let (pg, stmts) = self.world.servers.entry(target).or_default();
        let mut replies = pg.feed(&mut out);
        let mut reads = vec![];
        match std::mem::replace(&mut self.fault, Fault::None) {
            Fault::None => reads.push(replies),
            Fault::Replace(b) => reads.push(BytesMut::from(&b[..])),
            Fault::Append(b) => {
                replies.extend_from_slice(&b);
                reads.push(replies);
            }
            Fault::Truncate(n) => {
                replies.truncate(n);
                reads.push(replies);
            }
            Fault::Split(n) => {
                let rest = replies.split_off(n.min(replies.len()));
                reads.push(replies);
                reads.push(rest);
            }
        }
        let mut input = BytesMut::new();
        let mut params = HashMap::new();
        for read in reads {
            input.extend_from_slice(&read);
            if let Err(e) = self
                .s
                .scan(&mut input, &mut self.replies, stmts, &mut params)
            {
                // pump.rs: the server broke the protocol; it is dropped and the client told.
                self.world.servers.remove(&target);
                self.s.server_lost(&e.to_string(), &mut self.replies);
                return;
            }
        }
        if self.s.may_release(false) {
            self.s.detach();
        }
    }

    /// What the client was sent must be whole, well-framed messages.
    fn check_replies(&mut self) {
        loop {
            match decode_frame(&mut self.replies, usize::MAX) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("the client was sent a malformed message: {e}"),
            }
        }
        if !self.tampered {
            assert!(
                self.replies.is_empty(),
                "the client was sent a partial message"
            );
        }
        self.replies.clear();
    }
}

/// The session machine: random client message sequences (valid driver batches and raw
/// frames), delivered in random batches, against fake servers whose replies the input may
/// replace, extend, cut or split, with lost servers and failed checkouts.
pub fn session(data: &[u8]) {
    let mut r = Reader::new(data);
    let setup = r.byte();
    let phase = 1 + setup % 7;
    let enforce = setup & 0x10 != 0;
    let session_pool = setup & 0x20 != 0;
    let snap = session_snapshot(phase, enforce, session_pool);
    let conn = match r.byte() % 4 {
        0 => ConnectionKind::DbConfig(Group::Main),
        1 => ConnectionKind::DbConfig(Group::Ci),
        _ => ConnectionKind::Transparent,
    };
    let roll = f64::from(r.byte() % 101);
    let world = World {
        snap: snap.clone(),
        cache: ClassifyCache::new(classifier().clone(), 64),
        registry: Default::default(),
        servers: HashMap::new(),
    };
    let mut d = Driver {
        s: Session::new(conn, snap.clone(), roll),
        world,
        tally: Tally::default(),
        replies: BytesMut::new(),
        pending: Default::default(),
        fault: Fault::None,
        place_fails: false,
        tampered: false,
        gone: false,
    };
    let mut ops = 0;
    while !r.is_empty() && !d.gone && ops < 256 {
        ops += 1;
        match r.byte() % 16 {
            0..=8 => {
                let f = client_message(&mut r);
                d.pending.push_back(f);
            }
            9 | 10 => d.settle(),
            11 => {
                d.tampered = true;
                d.fault = match r.byte() % 4 {
                    0 => Fault::Replace(server_bytes(&mut r)),
                    1 => Fault::Append(server_bytes(&mut r)),
                    2 => Fault::Truncate(usize::from(r.byte())),
                    _ => Fault::Split(usize::from(r.byte())),
                };
            }
            12 => {
                if let Some(t) = d.s.attached() {
                    d.tampered = true;
                    d.world.servers.remove(&t);
                    d.s.server_lost("fuzz", &mut d.replies);
                }
            }
            13 => d.place_fails = true,
            14 => {
                let roll = f64::from(r.byte() % 101);
                let fresh = snap.clone();
                d.s.refresh(|| fresh, roll);
            }
            _ => d.check_replies(),
        }
    }
    d.settle();
    d.check_replies();
}

// === seeds ===

fn frame_bytes(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.raw.to_vec()).collect()
}

/// Session programs: `[setup, connection, roll, ops...]` in the encoding `session` reads.
fn session_seeds() -> Vec<Vec<u8>> {
    let q = |i: u8| vec![0, 0, i];
    let parse = |n: u8, i: u8| vec![0, 2, n, i];
    let bind = |n: u8| vec![0, 3, n];
    let (describe, execute, sync, settle) = (vec![0, 5], vec![0, 6], vec![0, 8], vec![9]);
    let exec_params = |i: u8| {
        [
            parse(0, i),
            bind(0),
            describe.clone(),
            execute.clone(),
            sync.clone(),
        ]
        .concat()
    };
    let mut programs = vec![
        [q(0), q(9), q(11), q(1), settle.clone()].concat(),
        [
            exec_params(8),
            settle.clone(),
            exec_params(12),
            settle.clone(),
        ]
        .concat(),
        [
            parse(1, 9),
            sync.clone(),
            settle.clone(),
            bind(1),
            execute.clone(),
            sync.clone(),
            settle.clone(),
        ]
        .concat(),
        [q(0), q(10), q(11), q(12), q(2), settle.clone()].concat(),
        [
            q(0),
            settle.clone(),
            vec![11, 1, 1, 90],
            q(9),
            settle.clone(),
            q(1),
            settle.clone(),
        ]
        .concat(),
        [q(0), q(9), vec![12], q(2), settle.clone()].concat(),
        [
            vec![13],
            q(9),
            settle.clone(),
            q(24),
            vec![0, 12, 0, 3, b'a', b'b', b'c', 0, 12, 1, 0],
            settle.clone(),
        ]
        .concat(),
        [q(19), q(20), q(21), q(15), q(18), settle.clone()].concat(),
        [q(0), vec![11, 3, 7], q(11), settle.clone(), q(1), settle].concat(),
    ];
    let mut seeds = vec![];
    for setup in [0u8, 3, 0x13, 0x26] {
        for p in &programs {
            seeds.push([vec![setup, 2, 50], p.clone()].concat());
        }
    }
    seeds.append(&mut programs);
    seeds
}

/// Starting inputs per target: valid messages and files, which the runners mutate.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "frame" => {
            let mut error = BytesMut::new();
            PgError::fatal("57P01", "bye").encode(&mut error);
            backend::parameter_status("TimeZone", "UTC", &mut error);
            let batch = frame_bytes(&[
                msg::q("SELECT 1"),
                msg::parse("a", "SELECT $1"),
                msg::bind("a"),
                msg::describe_p(),
                msg::execute(),
                msg::close_s("a"),
                msg::sync(),
            ]);
            vec![
                [&[3u8, 255][..], &batch].concat(),
                [&[2u8, 6][..], &batch].concat(),
                [&[3u8, 0][..], &error[..]].concat(),
            ]
        }
        "startup" => {
            let mut startup = BytesMut::new();
            encode_startup(&[("user", "gitlab"), ("database", "gitlabhq_production")], &mut startup);
            let mut newer = startup.to_vec();
            newer[6..8].copy_from_slice(&[0, 2]);
            let mut cancel = BytesMut::new();
            encode_cancel(7, 42, &mut cancel);
            let ssl = vec![0, 0, 0, 8, 4, 210, 22, 47];
            vec![startup.to_vec(), newer, cancel.to_vec(), ssl]
        }
        "scram" => {
            let userlist = include_str!("../config/userlist.txt");
            vec![
                [&[0u8][..], b"\"u\" \"pencil\"\0n,,n=,r=abc\0c=biws,r=abcsrv,p=AAAA"].concat(),
                [&[1u8, 0, 1, 1, 6][..], b"fyko+d", &[0, 0]].concat(),
                [&[1u8][..], userlist.as_bytes(), &[0, 0, 1, 0, 0, 0]].concat(),
            ]
        }
        "classify" => SQL
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .chain([
                b"SELECT p.id FROM projects p LEFT JOIN LATERAL (SELECT * FROM ci_builds b WHERE b.project_id = p.id) x ON true WHERE p.id IN (SELECT project_id FROM ci_pipelines) ORDER BY 1 LIMIT 5".to_vec(),
                b"INSERT INTO ci_builds (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET id = excluded.id RETURNING *".to_vec(),
                b"/* comment */ select \"Projects\".* from public.\"projects\" -- x\n".to_vec(),
                b"COPY (SELECT * FROM ci_builds) TO STDOUT WITH (FORMAT csv)".to_vec(),
            ])
            .collect(),
        "config" => {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
            let mut v = vec![config_seed().into_bytes()];
            for f in ["phases/phase-1.toml", "phases/phase-4.toml", "config/gitlab_schema_rules.toml", "config/userlist.txt"] {
                if let Ok(text) = std::fs::read(repo.join(f)) {
                    v.push(text);
                }
            }
            v
        }
        "session" => session_seeds(),
        _ => vec![],
    }
}
