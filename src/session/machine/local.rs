//! Session step, detached: batches the proxy answers itself, exactly as PostgreSQL would. A
//! BEGIN (simple or extended, named or unnamed) is held until the transaction's first
//! statement picks its server; a transaction that failed while its BEGIN was held is
//! answered until it ends; statement bookkeeping (Close, DEALLOCATE) needs no server.

use bytes::{BufMut, BytesMut};

use super::plan::LoneQuery;
use super::{execute, Ctx, Held, Session};
use crate::classify::{Classification, StatementKind, TxnCommand};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::Frame;
use crate::protocol::frontend::{bind_statement, may_start_with, parse_view, query_sql, target_of};
use crate::protocol::tag::back;
use crate::protocol::Front;
use crate::route::{route, Reason};

use super::super::prepared::ClientStatement;

const ABORTED: &str =
    "current transaction is aborted, commands ignored until end of transaction block";

fn single(c: &Classification) -> Option<StatementKind> {
    (c.statements.len() == 1 && c.error.is_none()).then_some(c.kind)
}

fn is_begin(c: &Classification) -> bool {
    matches!(
        single(c),
        Some(StatementKind::Transaction(TxnCommand::Begin { .. }))
    )
}

fn is_exit(c: &Classification) -> bool {
    matches!(
        single(c),
        Some(StatementKind::Transaction(
            TxnCommand::Commit | TxnCommand::Rollback
        ))
    )
}

/// `DEALLOCATE [PREPARE] name | ALL` as one whole simple query.
#[derive(Debug, PartialEq, Eq)]
pub enum Deallocate<'a> {
    All,
    Name(&'a str),
}

pub fn deallocate(sql: &str) -> Option<Deallocate<'_>> {
    if !may_start_with(sql.as_bytes(), &["deallocate"]) {
        return None;
    }
    let mut words = sql.trim().trim_end_matches(';').split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if name.eq_ignore_ascii_case("all") {
        return Some(Deallocate::All);
    }
    let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) if !quoted.contains('"') => quoted,
        Some(_) => return None,
        None if name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
        {
            name
        }
        None => return None,
    };
    Some(Deallocate::Name(name))
}

/// What a locally answered Bind did.
enum LocalBind {
    Begin,
    Exit,
    Refused,
}

impl Session {
    /// Answers `unit` without a server when that is exactly what PostgreSQL would answer.
    pub(super) fn answer_locally(
        &mut self,
        unit: &[Frame],
        lone: Option<&LoneQuery>,
        ctx: &mut Ctx,
        reply: &mut BytesMut,
    ) -> bool {
        let failed = self.held == (Held::Begin { failed: true });
        if !failed && !self.answerable(unit, lone, ctx) {
            return false;
        }
        let mut begun = false;
        let mut exiting = false;
        for f in unit {
            if self.skip {
                if f.front() == Front::Sync {
                    self.lone_sync(reply);
                }
                continue;
            }
            match f.front() {
                Front::Query => self.local_query(f, ctx, reply),
                Front::Parse => self.local_parse(f, ctx, reply),
                Front::Bind => match self.local_bind(f, failed, ctx, reply) {
                    LocalBind::Begin => begun = true,
                    LocalBind::Exit => exiting = true,
                    LocalBind::Refused => {}
                },
                Front::Describe => self.local_describe(f, reply),
                Front::Execute if exiting => {
                    exiting = false;
                    self.held = Held::None;
                    self.route.on_ready_for_query(b'I');
                    backend::command_complete("ROLLBACK", reply);
                }
                Front::Execute if begun => backend::command_complete("BEGIN", reply),
                Front::Close => {
                    match target_of(f) {
                        Some((b'S', [])) => self.stmts.unnamed = Default::default(),
                        Some((b'S', name)) => drop(self.stmts.remove(name)),
                        _ => {}
                    }
                    backend::empty(back::CLOSE_COMPLETE, reply);
                }
                Front::Sync => backend::ready_for_query(self.status().byte(), reply),
                _ => {}
            }
        }
        true
    }

    /// A Bind answered locally: the held BEGIN, or in a failed transaction its end.
    fn local_bind(
        &mut self,
        f: &Frame,
        failed: bool,
        ctx: &mut Ctx,
        reply: &mut BytesMut,
    ) -> LocalBind {
        let name = bind_statement(f).unwrap_or_default();
        let Some(class) = self.client_class(name, ctx) else {
            self.local_error("26000", "prepared statement does not exist", reply);
            return LocalBind::Refused;
        };
        if failed && !is_exit(&class) {
            self.local_error("25P02", ABORTED, reply);
            return LocalBind::Refused;
        }
        backend::empty(back::BIND_COMPLETE, reply);
        if failed {
            return LocalBind::Exit;
        }
        self.hold_begin(name, &class, ctx);
        LocalBind::Begin
    }

    /// Whether every message of `unit` can be answered locally (outside a failed
    /// transaction): a deferrable BEGIN with its Parse/Bind/Describe/Execute, Close, Sync,
    /// Flush, or a whole-query DEALLOCATE.
    fn answerable(&mut self, unit: &[Frame], lone: Option<&LoneQuery>, ctx: &mut Ctx) -> bool {
        let deferrable = |me: &Self, c: &Classification| {
            is_begin(c) && route(c, &me.snap.phase, &me.route).reason == Reason::BeginDeferred
        };
        if let Some((sql, c)) = lone {
            return deallocate(sql).is_some() || deferrable(self, c);
        }
        let mut begun = false;
        let mut batch_unnamed = None;
        for (i, f) in unit.iter().enumerate() {
            let ok = match f.front() {
                Front::Parse => parse_view(f).is_some_and(|p| {
                    let c = self.class_of(ctx.cache, p.sql);
                    let ok = is_begin(&c);
                    if p.name.is_empty() {
                        batch_unnamed = Some(c);
                    }
                    ok
                }),
                Front::Bind => {
                    let name = bind_statement(f).unwrap_or_default();
                    let c = self.statement_class(unit, i, name, &batch_unnamed, ctx);
                    let ok = !begun && c.is_some_and(|c| deferrable(self, &c));
                    begun = true;
                    ok
                }
                Front::Describe => match target_of(f) {
                    Some((b'S', name)) => self
                        .statement_class(unit, i, name, &batch_unnamed, ctx)
                        .is_some_and(|c| is_begin(&c)),
                    _ => begun,
                },
                Front::Execute => begun,
                Front::Close | Front::Sync | Front::Flush => true,
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        true
    }

    fn client_class(
        &mut self,
        name: &[u8],
        ctx: &mut Ctx,
    ) -> Option<std::sync::Arc<Classification>> {
        if name.is_empty() {
            return self.stmts.unnamed.class(ctx.cache).cloned();
        }
        self.stmts.get_mut(name).map(|s| s.class(ctx.cache).clone())
    }

    /// Counts the BEGIN and holds it: its text is kept to be sent to the server later.
    fn hold_begin(&mut self, name: &[u8], class: &Classification, ctx: &mut Ctx) {
        self.held_sql.clear();
        match self.stmts.get(name) {
            Some(s) if !name.is_empty() => self.held_sql.push_str(&s.stmt.sql),
            _ => self.held_sql.push_str(&self.stmts.unnamed.sql),
        }
        execute(
            &mut self.route,
            &self.snap,
            &mut self.wrote,
            class,
            &self.held_sql,
            None,
            ctx.observer,
        );
        self.held = Held::Begin { failed: false };
    }

    fn local_query(&mut self, f: &Frame, ctx: &mut Ctx, reply: &mut BytesMut) {
        let sql = query_sql(f).unwrap_or_default();
        match deallocate(sql) {
            Some(Deallocate::All) => {
                self.stmts.clear();
                backend::command_complete("DEALLOCATE ALL", reply);
            }
            Some(Deallocate::Name(name)) => match self.stmts.remove(name.as_bytes()) {
                Some(_) => backend::command_complete("DEALLOCATE", reply),
                None => {
                    let msg = format!("prepared statement \"{name}\" does not exist");
                    self.fail_held();
                    PgError::error("26000", msg).encode(reply);
                }
            },
            None => {
                let class = self.class_of(ctx.cache, sql);
                if self.held == (Held::Begin { failed: true }) {
                    if is_exit(&class) {
                        self.held = Held::None;
                        self.route.on_ready_for_query(b'I');
                        backend::command_complete("ROLLBACK", reply);
                    } else {
                        PgError::error("25P02", ABORTED).encode(reply);
                    }
                } else {
                    self.held_sql.clear();
                    self.held_sql.push_str(sql);
                    execute(
                        &mut self.route,
                        &self.snap,
                        &mut self.wrote,
                        &class,
                        sql,
                        None,
                        ctx.observer,
                    );
                    self.held = Held::Begin { failed: false };
                    backend::command_complete("BEGIN", reply);
                }
            }
        }
        backend::ready_for_query(self.status().byte(), reply);
    }

    fn local_parse(&mut self, f: &Frame, ctx: &mut Ctx, reply: &mut BytesMut) {
        let Some(p) = parse_view(f) else {
            self.local_error("08P01", super::forward::MALFORMED_PARSE, reply);
            return;
        };
        let class = self.class_of(ctx.cache, p.sql);
        if p.name.is_empty() {
            self.stmts
                .unnamed
                .set(p.sql, p.param_types, class, ctx.cache);
        } else {
            let stmt = ctx.registry.intern(p.sql, p.param_types);
            let s = ClientStatement::new(stmt, class, ctx.cache);
            if let Err(e) = self.stmts.insert(p.name, s) {
                self.local_error("53400", &too_many(e.limit), reply);
                return;
            }
        }
        backend::empty(back::PARSE_COMPLETE, reply);
    }

    fn local_describe(&mut self, f: &Frame, reply: &mut BytesMut) {
        if let Some((b'S', name)) = target_of(f) {
            let types: &[u8] = match self.stmts.get(name) {
                Some(s) if !name.is_empty() => &s.stmt.param_types,
                _ => &self.stmts.unnamed.param_types,
            };
            reply.put_u8(back::PARAMETER_DESCRIPTION);
            if types.len() >= 2 {
                reply.put_i32(4 + types.len() as i32);
                reply.put_slice(types);
            } else {
                reply.put_i32(6);
                reply.put_i16(0);
            }
        }
        backend::empty(back::NO_DATA, reply);
    }

    /// An error the proxy answers in an extended batch: the rest is skipped until Sync.
    fn local_error(&mut self, code: &'static str, msg: &str, reply: &mut BytesMut) {
        PgError::error(code, msg).encode(reply);
        self.fail_held();
        self.skip = true;
    }

    /// An error inside a held transaction aborts it, as on a server.
    pub(super) fn fail_held(&mut self) {
        if self.held != Held::None {
            self.held = Held::Begin { failed: true };
        }
    }
}

/// The error for a client over its prepared-statement limit.
pub fn too_many(limit: usize) -> String {
    format!(
        "too many prepared statements on this connection (limit {limit}, pool.max_client_prepared_statements); close or DEALLOCATE some"
    )
}
