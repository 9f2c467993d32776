//! Test support for the session machine: a tiny in-memory PostgreSQL that answers the wire
//! messages the proxy sends it (prepared statements, portals, transaction status, errors and
//! skip-until-Sync) and records what it executed. Only for tests without a database.

use std::collections::{HashMap, HashSet};

use bytes::{BufMut, BytesMut};

use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::{decode_frame, read_cstr};

/// One fake server connection.
#[derive(Default)]
pub struct FakePg {
    status: Status,
    skipping: bool,
    statements: HashMap<String, String>,
    portals: HashMap<String, String>,
    /// SQL of every statement that ran, in order.
    pub executed: Vec<String>,
    /// Every Bind named a statement that existed (the proxy prepared on demand correctly).
    pub missing: Vec<String>,
    pub closed: HashSet<String>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    #[default]
    Idle,
    Txn,
    Failed,
}

fn cstr(b: &mut &[u8]) -> String {
    String::from_utf8_lossy(read_cstr(b).unwrap_or_default()).into_owned()
}

impl FakePg {
    pub fn status(&self) -> u8 {
        match self.status {
            Status::Idle => b'I',
            Status::Txn => b'T',
            Status::Failed => b'E',
        }
    }

    fn error(&mut self, code: &'static str, msg: &str, out: &mut BytesMut, extended: bool) {
        PgError::error(code, msg).encode(out);
        if self.status == Status::Txn {
            self.status = Status::Failed;
        }
        self.skipping = extended;
    }

    /// Runs one statement; false when it failed (the error is written).
    fn run(&mut self, sql: &str, out: &mut BytesMut, extended: bool) -> bool {
        let upper = sql.trim().to_ascii_uppercase();
        let word = upper
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches(';')
            .to_string();
        let exit = matches!(word.as_str(), "COMMIT" | "END" | "ROLLBACK" | "ABORT");
        if self.status == Status::Failed && !exit {
            self.error("25P02", "current transaction is aborted", out, extended);
            return false;
        }
        if let Some(rest) =
            sql.strip_prefix("DO $pgdecomp$ BEGIN RAISE EXCEPTION USING ERRCODE = '")
        {
            let code: &'static str = match rest.get(..5).unwrap_or_default() {
                "2F002" => "2F002",
                "26000" => "26000",
                "53400" => "53400",
                "08P01" => "08P01",
                _ => "XX000",
            };
            self.error(code, sql, out, extended);
            return false;
        }
        self.executed.push(sql.to_string());
        let tag = match word.as_str() {
            "BEGIN" | "START" => {
                if self.status == Status::Idle {
                    self.status = Status::Txn;
                }
                "BEGIN"
            }
            _ if exit => {
                self.status = Status::Idle;
                if word == "COMMIT" || word == "END" {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                }
            }
            "DEALLOCATE" => {
                let name = upper
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if name == "all" {
                    self.statements.clear();
                } else if self.statements.remove(&name).is_none() {
                    self.error("26000", "prepared statement does not exist", out, extended);
                    return false;
                }
                "DEALLOCATE"
            }
            _ => "SELECT 1",
        };
        backend::command_complete(tag, out);
        true
    }

    /// Answers every complete message in `input`.
    pub fn feed(&mut self, input: &mut BytesMut) -> BytesMut {
        let mut out = BytesMut::new();
        while let Ok(Some(f)) = decode_frame(input, 1 << 30) {
            let mut b = f.body();
            if self.skipping && f.tag != b'S' {
                continue;
            }
            match f.tag {
                b'Q' => {
                    let sql = cstr(&mut b);
                    self.statements.remove("");
                    self.run(&sql, &mut out, false);
                    self.skipping = false;
                    backend::ready_for_query(self.status(), &mut out);
                }
                b'P' => {
                    let (name, sql) = (cstr(&mut b), cstr(&mut b));
                    if self.status == Status::Failed {
                        self.error("25P02", "current transaction is aborted", &mut out, true);
                    } else if !name.is_empty() && self.statements.contains_key(&name) {
                        self.error("42P05", "prepared statement already exists", &mut out, true);
                    } else {
                        self.statements.insert(name, sql);
                        backend::empty(b'1', &mut out);
                    }
                }
                b'B' => {
                    let (portal, stmt) = (cstr(&mut b), cstr(&mut b));
                    match self.statements.get(&stmt).cloned() {
                        Some(sql) => {
                            self.portals.insert(portal, sql);
                            backend::empty(b'2', &mut out);
                        }
                        None => {
                            self.missing.push(stmt);
                            self.error(
                                "26000",
                                "prepared statement does not exist",
                                &mut out,
                                true,
                            );
                        }
                    }
                }
                b'D' => {
                    if b.first() == Some(&b'S') {
                        out.put_u8(b't');
                        out.put_i32(6);
                        out.put_i16(0);
                    }
                    backend::empty(b'n', &mut out);
                }
                b'E' => {
                    let portal = cstr(&mut b);
                    match self.portals.get(&portal).cloned() {
                        Some(sql) => {
                            self.run(&sql, &mut out, true);
                        }
                        None => self.error("34000", "portal does not exist", &mut out, true),
                    }
                }
                b'C' => {
                    let kind = b.first().copied();
                    b = b.get(1..).unwrap_or_default();
                    let name = cstr(&mut b);
                    if kind == Some(b'S') {
                        self.statements.remove(&name);
                        self.closed.insert(name);
                    } else {
                        self.portals.remove(&name);
                    }
                    backend::empty(b'3', &mut out);
                }
                b'S' => {
                    self.skipping = false;
                    self.portals.clear();
                    backend::ready_for_query(self.status(), &mut out);
                }
                _ => {}
            }
        }
        out
    }
}
