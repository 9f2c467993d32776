//! The admin console beside the pipeline: the virtual database `pgdecomp`, reachable with psql
//! by the configured admin users, answering PgBouncer-style SHOW commands and RELOAD.

mod show;

use bytes::{BufMut, BytesMut};

use crate::protocol::backend::{self, PgError};
use crate::protocol::frontend::query_sql;
use crate::session::{ClientIo, SessionError, Shared};

/// A result set: column names and text rows (None is NULL).
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, values: Vec<Option<String>>) {
        self.rows.push(values);
    }

    fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(b'T');
        out.put_i32(0);
        out.put_i16(self.columns.len() as i16);
        for c in &self.columns {
            out.put_slice(c.as_bytes());
            out.put_u8(0);
            out.put_i32(0);
            out.put_i16(0);
            out.put_i32(25); // text
            out.put_i16(-1);
            out.put_i32(-1);
            out.put_i16(0);
        }
        let len = (out.len() - start - 1) as i32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        for row in &self.rows {
            let start = out.len();
            out.put_u8(b'D');
            out.put_i32(0);
            out.put_i16(row.len() as i16);
            for v in row {
                match v {
                    Some(v) => {
                        out.put_i32(v.len() as i32);
                        out.put_slice(v.as_bytes());
                    }
                    None => out.put_i32(-1),
                }
            }
            let len = (out.len() - start - 1) as i32;
            out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        }
        backend::command_complete(&format!("SHOW {}", self.rows.len()), out);
    }
}

/// What one admin command produced.
pub enum Reply {
    Rows(Table),
    Done(&'static str),
}

/// Runs one admin command.
pub fn execute(sql: &str, shared: &Shared) -> Result<Reply, PgError> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW", what] => show::show(what, shared).map(Reply::Rows),
        ["RELOAD"] => shared
            .reload()
            .map(|()| Reply::Done("RELOAD"))
            .map_err(|e| PgError::error("F0000", format!("reload failed, the previous configuration stays live: {e}"))),
        [] => Ok(Reply::Done("")),
        _ => Err(PgError::error(
            "42601",
            format!("unsupported admin command: {sql:?}; try SHOW VERSION|PHASE|POOLS|SERVERS|STATS|CONFIG|DATABASES|SCHEMAS|VIOLATIONS or RELOAD"),
        )),
    }
}

/// Serves a logged-in admin until it disconnects. Only the simple query protocol is spoken,
/// as with PgBouncer's console.
pub async fn serve(io: &mut ClientIo, shared: &Shared) -> Result<(), SessionError> {
    loop {
        io.flush().await?;
        let Some(f) = io.read_frame().await? else {
            return Ok(());
        };
        match f.tag {
            b'X' => return Ok(()),
            b'Q' => {
                let sql = query_sql(&f).unwrap_or_default();
                for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    match execute(stmt, shared) {
                        Ok(Reply::Rows(t)) => t.encode(&mut io.wbuf),
                        Ok(Reply::Done(tag)) => backend::command_complete(tag, &mut io.wbuf),
                        Err(e) => {
                            e.encode(&mut io.wbuf);
                            break;
                        }
                    }
                }
                if sql.trim().is_empty() {
                    backend::empty(b'I', &mut io.wbuf);
                }
                backend::ready_for_query(b'I', &mut io.wbuf);
            }
            b'S' => backend::ready_for_query(b'I', &mut io.wbuf),
            b'H' => {}
            _ => PgError::error(
                "0A000",
                "the admin console speaks only the simple query protocol",
            )
            .encode(&mut io.wbuf),
        }
    }
}
