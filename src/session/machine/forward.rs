//! Session step, attached: each client message on its way to the attached server. Statements
//! are renamed to the proxy-wide server names and prepared on demand; every execution (a
//! Query, or a Bind) is routed, checked and counted once, and refused in place when enforced.

use bytes::BytesMut;

use super::local::{deallocate, too_many, Deallocate};
use super::refuse::own_error;
use super::{execute, execute_planned, Attachment, Ctx, Session};
use crate::protocol::frame::Frame;
use crate::protocol::frontend::{
    bind_statement, may_start_with, parse_view, target_of, write_bind_head, write_parse,
    write_query, write_target,
};
use crate::protocol::Front;
use crate::server::ServerStatements;
use crate::session::prepared::{ClientStatement, Statement};
use crate::session::scan::SegmentOwner;

/// The portal name the proxy closes in place of a client's Close of a named statement: closing
/// a portal that does not exist is not an error, and yields the CloseComplete the client expects
/// in exactly the right place while the shared server statement stays prepared.
const NOOP_PORTAL: &str = "pgdecomp_noop";

const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

pub(super) const MALFORMED_PARSE: &str =
    "malformed Parse message, or its statement text is not valid UTF-8 (pgdecomp reads \
     statements as UTF-8; set client_encoding to UTF8)";

impl Session {
    /// Writes client message `f` for the attached server into `out`. Nothing is written when
    /// no server is attached.
    pub fn client_frame(
        &mut self,
        f: &Frame,
        ctx: &mut Ctx,
        server: &mut ServerStatements,
        out: &mut BytesMut,
    ) {
        let Some(a) = self.link.as_mut() else {
            return;
        };
        if self.skip {
            if f.front() == Front::Sync {
                self.skip = false;
                out.extend_from_slice(&f.raw);
                a.tracker.sync();
            }
            return;
        }
        match f.front() {
            Front::Query => self.forward_query(f, ctx, server, out),
            Front::Parse => self.forward_parse(f, ctx, server, out),
            Front::Bind => self.forward_bind(f, ctx, server, out),
            Front::Describe => self.forward_describe(f, server, out),
            Front::Close => self.forward_close(f, out),
            Front::Sync => {
                out.extend_from_slice(&f.raw);
                a.tracker.sync();
            }
            Front::FunctionCall => {
                a.put_raw(&f.raw, out);
                a.tracker.close(SegmentOwner::Client);
            }
            Front::CopyDone | Front::CopyFail => {
                out.extend_from_slice(&f.raw);
                a.tracker.copy_done();
            }
            Front::Flush if a.prepares && a.tracker.client_open() => {
                out.extend_from_slice(&f.raw);
                out.extend_from_slice(&SYNC);
                a.tracker.proxy_sync();
            }
            // CopyData and Flush belong to requests already sent.
            Front::CopyData | Front::Flush => a.put_raw(&f.raw, out),
            Front::Execute | Front::Terminate | Front::Other(_) => {
                a.put_raw(&f.raw, out);
                a.tracker.client_message();
            }
        }
    }

    fn forward_query(
        &mut self,
        f: &Frame,
        ctx: &mut Ctx,
        server: &mut ServerStatements,
        out: &mut BytesMut,
    ) {
        let (sql, whole) = self.query_class(ctx.cache, f);
        let Session {
            link: Some(a),
            stmts,
            route,
            snap,
            wrote,
            planned,
            ..
        } = self
        else {
            return;
        };
        a.prepares = false;
        let mut planned = planned.take().and_then(|p| p.decision_for(sql));
        // Each statement of the string is routed, checked and counted on its own; one refused
        // statement refuses the string (it is one implicit transaction).
        let each = ctx.cache.each(sql, &whole);
        let statements = each.as_deref().map_or(std::slice::from_ref(&whole), |e| e);
        for class in statements {
            let at = (Some(a.pin), planned.take());
            let d = execute_planned(route, snap, wrote, (class, sql), at, ctx.observer);
            if let Some(v) = d.rejected() {
                a.refuse_query(&v.pg_error(sql), out);
                return;
            }
        }
        a.unnamed_here = false;
        match deallocate(sql) {
            Some(Deallocate::Name(name)) => {
                if let Some(s) = stmts.remove(name.as_bytes()) {
                    // The server knows it by the proxy's name; others re-prepare on demand.
                    ensure_prepared(&s.stmt, a, server, out);
                    server.remove(&s.stmt.server_name);
                    write_query(&format!("DEALLOCATE {}", s.stmt.server_name), out);
                    a.tracker.close(SegmentOwner::Client);
                    return;
                }
            }
            Some(Deallocate::All) => {
                stmts.clear();
                server.clear();
            }
            None if is_discard_all(sql) => {
                stmts.clear();
                server.clear();
            }
            None => {}
        }
        a.put_raw(&f.raw, out);
        a.tracker.close(SegmentOwner::Client);
    }

    fn forward_parse(
        &mut self,
        f: &Frame,
        ctx: &mut Ctx,
        server: &mut ServerStatements,
        out: &mut BytesMut,
    ) {
        let view = parse_view(f);
        let class = view.as_ref().map(|p| self.class_of(ctx.cache, p.sql));
        let Session {
            link: Some(a),
            stmts,
            skip,
            ..
        } = self
        else {
            return;
        };
        let (Some(p), Some(class)) = (view, class) else {
            // Its statement could not be classified (not UTF-8, or malformed): it must not run,
            // nor leave an earlier unnamed statement's classification to its Binds.
            let e = own_error("08P01", MALFORMED_PARSE.into());
            a.refuse_extended(&e, out);
            *skip = true;
            return;
        };
        if p.name.is_empty() {
            stmts.unnamed.set(p.sql, p.param_types, class, ctx.cache);
            a.unnamed_here = true;
            out.extend_from_slice(&f.raw);
            a.tracker.parse_sent(None, false);
            return;
        }
        let stmt = ctx.registry.intern(p.sql, p.param_types);
        if let Err(e) = stmts.insert(p.name, ClientStatement::new(stmt.clone(), class, ctx.cache)) {
            a.refuse_extended(&own_error("53400", too_many(e.limit)), out);
            *skip = true;
            return;
        }
        if server.remove(&stmt.server_name) {
            // Prepared here already: re-plan on the server rather than fail with "already
            // exists", so the client gets its ParseComplete in the right place.
            write_target(b'C', b'S', &stmt.server_name, out);
            a.tracker.injected_close();
        }
        if let Some(old) = server.insert(stmt.server_name.clone()) {
            write_target(b'C', b'S', &old, out);
            a.tracker.injected_close();
        }
        write_parse(&stmt.server_name, &stmt.sql, &stmt.param_types, out);
        a.tracker.parse_sent(Some(stmt.server_name.clone()), false);
    }

    fn forward_bind(
        &mut self,
        f: &Frame,
        ctx: &mut Ctx,
        server: &mut ServerStatements,
        out: &mut BytesMut,
    ) {
        let Some(a) = self.link.as_mut() else {
            return;
        };
        a.prepares = false;
        match bind_statement(f).unwrap_or_default() {
            [] => self.bind_unnamed(f, ctx, out),
            name => self.bind_named(f, name, ctx, server, out),
        }
    }

    /// A Bind of the unnamed statement: re-parsed first when it was parsed elsewhere.
    fn bind_unnamed(&mut self, f: &Frame, ctx: &mut Ctx, out: &mut BytesMut) {
        let Session {
            link: Some(a),
            stmts,
            route,
            snap,
            wrote,
            skip,
            ..
        } = self
        else {
            return;
        };
        let Some(class) = stmts.unnamed.class(ctx.cache).cloned() else {
            let e = own_error("26000", "unnamed prepared statement does not exist".into());
            return refuse(a, skip, e, out);
        };
        let sql = &stmts.unnamed.sql;
        let d = execute(route, snap, wrote, &class, sql, Some(a.pin), ctx.observer);
        if let Some(v) = d.rejected() {
            return refuse(a, skip, v.pg_error(sql), out);
        }
        if !a.unnamed_here {
            // Parsed in an earlier transaction, maybe on another server connection.
            write_parse("", sql, &stmts.unnamed.param_types, out);
            a.tracker.parse_sent(None, true);
            a.unnamed_here = true;
        }
        a.put_raw(&f.raw, out);
        a.tracker.bind_sent(false);
    }

    /// A Bind of a named statement: renamed to the server's name, prepared there on demand.
    fn bind_named(
        &mut self,
        f: &Frame,
        name: &[u8],
        ctx: &mut Ctx,
        server: &mut ServerStatements,
        out: &mut BytesMut,
    ) {
        let Session {
            link: Some(a),
            stmts,
            route,
            snap,
            wrote,
            skip,
            ..
        } = self
        else {
            return;
        };
        let Some(s) = stmts.get_mut(name) else {
            let shown = String::from_utf8_lossy(name);
            let e = own_error(
                "26000",
                format!("prepared statement \"{shown}\" does not exist"),
            );
            return refuse(a, skip, e, out);
        };
        let class = s.class(ctx.cache).clone();
        let stmt = s.stmt.clone();
        let on = Some(a.pin);
        let d = execute(route, snap, wrote, &class, &stmt.sql, on, ctx.observer);
        if let Some(v) = d.rejected() {
            return refuse(a, skip, v.pg_error(&stmt.sql), out);
        }
        ensure_prepared(&stmt, a, server, out);
        match write_bind_head(f, &stmt.server_name, out) {
            Some(rest) => a.put_raw_from(&f.raw, rest, out),
            None => a.put_raw(&f.raw, out),
        }
        a.tracker.bind_sent(false);
    }

    fn forward_describe(&mut self, f: &Frame, server: &mut ServerStatements, out: &mut BytesMut) {
        let Session {
            link: Some(a),
            stmts,
            ..
        } = self
        else {
            return;
        };
        match target_of(f) {
            Some((b'S', [])) => {
                if !a.unnamed_here && stmts.unnamed.class.is_some() {
                    write_parse("", &stmts.unnamed.sql, &stmts.unnamed.param_types, out);
                    a.tracker.parse_sent(None, true);
                    a.unnamed_here = true;
                }
                out.extend_from_slice(&f.raw);
            }
            Some((b'S', name)) => match stmts.get(name) {
                Some(s) => {
                    let stmt = s.stmt.clone();
                    ensure_prepared(&stmt, a, server, out);
                    write_target(b'D', b'S', &stmt.server_name, out);
                }
                None => out.extend_from_slice(&f.raw),
            },
            _ => out.extend_from_slice(&f.raw),
        }
        a.tracker.client_message();
    }

    fn forward_close(&mut self, f: &Frame, out: &mut BytesMut) {
        let Session {
            link: Some(a),
            stmts,
            ..
        } = self
        else {
            return;
        };
        match target_of(f) {
            Some((b'S', [])) => {
                stmts.unnamed = Default::default();
                out.extend_from_slice(&f.raw);
            }
            Some((b'S', name)) => {
                stmts.remove(name);
                write_target(b'C', b'P', NOOP_PORTAL, out);
            }
            _ => out.extend_from_slice(&f.raw),
        }
        a.tracker.close_sent(false);
    }
}

/// Refuses an extended execution; the client's messages are then skipped until Sync.
fn refuse(a: &mut Attachment, skip: &mut bool, e: crate::route::PgError, out: &mut BytesMut) {
    a.refuse_extended(&e, out);
    *skip = true;
}

/// Prepares `stmt` on the attached server unless it is there; a full server set closes its
/// least recently used statement first. The replies to both are dropped.
fn ensure_prepared(
    stmt: &Statement,
    a: &mut Attachment,
    server: &mut ServerStatements,
    out: &mut BytesMut,
) {
    if server.touch(&stmt.server_name) {
        return;
    }
    if let Some(old) = server.insert(stmt.server_name.clone()) {
        write_target(b'C', b'S', &old, out);
        a.tracker.injected_close();
    }
    write_parse(&stmt.server_name, &stmt.sql, &stmt.param_types, out);
    a.tracker.parse_sent(Some(stmt.server_name.clone()), true);
}

fn is_discard_all(sql: &str) -> bool {
    if !may_start_with(sql.as_bytes(), &["discard"]) {
        return false;
    }
    let mut w = sql.trim().trim_end_matches(';').split_whitespace();
    matches!((w.next(), w.next(), w.next()), (Some(a), Some(b), None)
        if a.eq_ignore_ascii_case("discard") && b.eq_ignore_ascii_case("all"))
}

#[cfg(test)]
mod tests {
    use super::is_discard_all;

    #[test]
    fn discard_all_is_told_by_its_words_whatever_their_case_and_spacing() {
        for sql in ["DISCARD ALL", " discard\n\tall ;", "Discard All;"] {
            assert!(is_discard_all(sql), "{sql:?}");
        }
        for sql in [
            "DISCARD PLANS",
            "DISCARD ALL x",
            "SELECT 1",
            "",
            "DISCARDALL",
            "discar",
        ] {
            assert!(!is_discard_all(sql), "{sql:?}");
        }
    }
}
