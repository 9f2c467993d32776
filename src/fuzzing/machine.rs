//! Fuzz target for the session machine (client → framing → **session** → …): random client
//! message sequences against fake servers, through `driver.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;

use super::driver::{Driver, Fault};
use super::text::classifier;
use super::Reader;
use crate::classify::ClassifyCache;
use crate::config::Snapshot;
use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::Frame;
use crate::route::{ConnectionKind, Group};
use crate::session::harness::{self, msg, Tally, World};
use crate::session::Session;

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
    let mode = if enforce { "enforce" } else { "observe" };
    let pool_mode = if session_pool {
        "session"
    } else {
        "transaction"
    };
    harness::snapshot_with(u32::from(phase), mode, pool_mode)
}

/// Statements the session target sends: transaction control, both groups, cross-group
/// statements, session state, prepared statements, COPY, and the proxy's own error text.
pub(super) const SQL: &[&str] = &[
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
        11 => msg::frame(b'C', &[b'P', 0]),
        12 => {
            let tag = [b'd', b'c', b'f', b'F', b'X', b'p'][usize::from(r.byte()) % 6];
            msg::frame(tag, r.chunk())
        }
        _ => {
            let tag = r.byte();
            msg::frame(tag, r.chunk())
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
            out.extend_from_slice(&msg::frame(tag, r.chunk()).raw);
        }
        _ => out.extend_from_slice(r.chunk()),
    }
    out.to_vec()
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
                d.s.refresh(&fresh, || roll);
            }
            _ => d.check_replies(),
        }
    }
    d.settle();
    d.check_replies();
}
