//! Settings the proxy answers itself, before classify: `SET`, `RESET` and `SHOW` of the
//! `pgdecomp.*` parameters. They describe the client's session with the proxy, so they never
//! reach a server (where they would stick to a pooled connection another client gets next).

use crate::shared::Shared;
use crate::topology::Lsn;

/// A `pgdecomp.*` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    SetReadYourWrites(bool),
    SetMinLsn(Lsn),
    /// `pgdecomp.actor`: who the client is for `actor` rollouts (a project, a user, …).
    SetActor(String),
    /// RESET of one parameter (`None`: RESET ALL is left to the server, so it is not here).
    Reset(Param),
    Show(Param),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    ReadYourWrites,
    MinLsn,
    /// Read-only: a WAL position at or past the client's last write, to hand to another
    /// pgdecomp instance as its `pgdecomp.min_lsn`.
    WriteLsn,
    /// The actor of `actor` rollouts; RESET goes back to the rollout's default (user or
    /// application_name).
    Actor,
}

impl Param {
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadYourWrites => "pgdecomp.read_your_writes",
            Self::MinLsn => "pgdecomp.min_lsn",
            Self::WriteLsn => "pgdecomp.write_lsn",
            Self::Actor => "pgdecomp.actor",
        }
    }
}

/// A refusal with PostgreSQL's SQLSTATE for the same mistake.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalError {
    pub code: &'static str,
    pub message: String,
}

fn err(code: &'static str, message: String) -> Option<Result<Local, LocalError>> {
    Some(Err(LocalError { code, message }))
}

/// Recognises a whole simple-protocol query that is one `pgdecomp.*` command. `None` for
/// anything else, which goes to classify as usual.
pub fn parse(sql: &str) -> Option<Result<Local, LocalError>> {
    // Every simple query passes here: rule most out by their first word, without allocating.
    let start = sql.trim_start();
    let verb = start
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap_or_default();
    if !["set", "reset", "show"]
        .iter()
        .any(|v| verb.eq_ignore_ascii_case(v))
    {
        return None;
    }
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let words: Vec<&str> = sql.split_whitespace().collect();
    let (verb, rest) = words.split_first()?;
    let verb = verb.to_ascii_uppercase();
    let rest = match (verb.as_str(), rest) {
        ("SET", [scope, rest @ ..]) if scope.eq_ignore_ascii_case("session") => rest,
        ("SET" | "RESET" | "SHOW", rest) => rest,
        _ => return None,
    };
    // `SET pgdecomp.x=on` has no spaces around `=`: split it out of the first word.
    let joined = rest.join(" ");
    let (name, value) = match joined.split_once(['=', ' ']) {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (joined.as_str(), None),
    };
    let lower = name.to_ascii_lowercase();
    if !lower.starts_with("pgdecomp.") {
        return None;
    }
    let param = match lower.as_str() {
        "pgdecomp.read_your_writes" => Param::ReadYourWrites,
        "pgdecomp.min_lsn" => Param::MinLsn,
        "pgdecomp.write_lsn" => Param::WriteLsn,
        "pgdecomp.actor" => Param::Actor,
        _ => {
            return err(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            )
        }
    };
    match verb.as_str() {
        "SHOW" if value.is_none() => Some(Ok(Local::Show(param))),
        "SET" | "RESET" if param == Param::WriteLsn => err(
            "55P02",
            format!("parameter \"{name}\" cannot be changed: it reports the client's writes"),
        ),
        "RESET" if value.is_none() => Some(Ok(Local::Reset(param))),
        "SET" => {
            let value = value.unwrap_or_default();
            let value = value
                .strip_prefix("TO ")
                .or_else(|| value.strip_prefix("to "))
                .unwrap_or(value)
                .trim()
                .trim_start_matches('=')
                .trim()
                .trim_matches('\'');
            match param {
                Param::ReadYourWrites => match value.to_ascii_lowercase().as_str() {
                    "on" | "true" | "yes" | "1" => Some(Ok(Local::SetReadYourWrites(true))),
                    "off" | "false" | "no" | "0" => Some(Ok(Local::SetReadYourWrites(false))),
                    _ => err(
                        "22023",
                        format!("parameter \"{name}\" requires a Boolean value"),
                    ),
                },
                Param::WriteLsn => None,
                Param::Actor if value.eq_ignore_ascii_case("default") => {
                    Some(Ok(Local::Reset(Param::Actor)))
                }
                Param::Actor => Some(Ok(Local::SetActor(value.replace("''", "'")))),
                Param::MinLsn => match value.parse::<Lsn>() {
                    Ok(l) => Some(Ok(Local::SetMinLsn(l))),
                    Err(e) => err(
                        "22023",
                        format!("invalid value for parameter \"{name}\": {e}"),
                    ),
                },
            }
        }
        _ => err("42601", format!("syntax error in \"{sql}\"")),
    }
}

/// Whether a Query's `body` may be one of `parse`'s commands, before its text is validated.
fn may_be_local(body: &[u8]) -> bool {
    crate::protocol::frontend::may_start_with(body, &["set", "reset", "show"])
}

/// Answers `first` when it is a `pgdecomp.*` command; returns false (and does nothing) when it
/// is not. Inside a transaction the command is answered the same way: it changes proxy state
/// only, which a ROLLBACK does not undo (documented).
pub async fn answer(
    c: &mut super::client::Client,
    first: &crate::protocol::frame::Frame,
    shared: &Shared,
) -> bool {
    use crate::protocol::backend::{self, PgError, Table};
    if !may_be_local(first.body()) {
        return false;
    }
    let Some(sql) = crate::protocol::frontend::query_sql(first) else {
        return false;
    };
    let Some(cmd) = parse(sql) else {
        return false;
    };
    match cmd {
        Ok(Local::Show(Param::WriteLsn)) => {
            let value = write_lsn(c, shared).await;
            let mut t = Table::new(&[Param::WriteLsn.name()]);
            t.row(vec![Some(value)]);
            t.encode(&mut c.io.wbuf);
        }
        Ok(Local::Show(p)) => {
            let value = match p {
                Param::ReadYourWrites => if c.ryw.enabled { "on" } else { "off" }.to_string(),
                Param::Actor => c.actor.explicit().unwrap_or_default().to_string(),
                Param::MinLsn | Param::WriteLsn => {
                    c.ryw.required().map(|l| l.to_string()).unwrap_or_default()
                }
            };
            let mut t = Table::new(&[p.name()]);
            t.row(vec![Some(value)]);
            t.encode(&mut c.io.wbuf);
        }
        Ok(change) => {
            let tag = apply(c, change, shared);
            backend::command_complete(tag, &mut c.io.wbuf);
        }
        Err(e) => PgError::error(e.code, e.message).encode(&mut c.io.wbuf),
    }
    backend::ready_for_query(c.session.status().byte(), &mut c.io.wbuf);
    true
}

/// Applies a SET or RESET and returns its command tag (SHOW is answered by `answer`).
fn apply(c: &mut super::client::Client, cmd: Local, shared: &Shared) -> &'static str {
    match cmd {
        Local::SetReadYourWrites(on) => {
            c.ryw.enabled = on;
            if !on {
                c.ryw.clear();
            }
            "SET"
        }
        Local::SetMinLsn(lsn) => {
            c.ryw.require(lsn, std::time::Instant::now());
            "SET"
        }
        Local::SetActor(actor) => {
            c.set_actor(Some(&actor), shared);
            "SET"
        }
        Local::Reset(Param::Actor) => {
            c.set_actor(None, shared);
            "RESET"
        }
        Local::Reset(Param::ReadYourWrites) => {
            c.ryw.enabled = c.session.snap.health.read_your_writes;
            "RESET"
        }
        Local::Reset(_) => {
            c.ryw.clear();
            "RESET"
        }
        Local::Show(_) => "SHOW",
    }
}

/// The client's write position: waits (bounded by two health rounds) for the checker's first
/// primary sample after the client's last commit, which bounds that commit's position.
async fn write_lsn(c: &mut super::client::Client, shared: &Shared) -> String {
    use crate::topology::ClusterId;
    let h = &c.session.snap.health;
    let deadline = std::time::Instant::now() + (h.interval + h.statement_timeout) * 2;
    let mut changes = shared.topology.subscribe();
    loop {
        let view = shared.topology.view();
        let now = std::time::Instant::now();
        for cluster in ClusterId::ALL {
            c.ryw.need(&view, cluster, now);
        }
        if !c.ryw.unresolved() || now >= deadline {
            break;
        }
        let _ = tokio::time::timeout(deadline - now, changes.changed()).await;
    }
    c.ryw.required().map(|l| l.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_set_reset_and_show_pass_the_byte_check() {
        for sql in [
            "SET pgdecomp.actor = 'x'",
            " \n show pgdecomp.actor",
            "Reset x",
            "\u{b}SET x",
            "sEt;",
            "",
        ] {
            assert!(may_be_local(sql.as_bytes()), "{sql:?}");
        }
        for sql in ["SELECT 1", "settle", "SHOWx", " begin", "resetting", "sho"] {
            assert!(!may_be_local(sql.as_bytes()), "{sql:?}");
            assert!(parse(sql).is_none(), "{sql:?}");
        }
    }

    fn ok(sql: &str) -> Local {
        parse(sql).unwrap().unwrap()
    }

    #[test]
    fn set_forms() {
        for sql in [
            "SET pgdecomp.read_your_writes = off",
            "set pgdecomp.read_your_writes to 'off';",
            "SET SESSION pgdecomp.read_your_writes=false",
            "  SET PGDECOMP.READ_YOUR_WRITES = 0 ; ",
        ] {
            assert_eq!(ok(sql), Local::SetReadYourWrites(false), "{sql}");
        }
        assert_eq!(
            ok("SET pgdecomp.read_your_writes TO on"),
            Local::SetReadYourWrites(true)
        );
        assert_eq!(
            ok("SET pgdecomp.min_lsn = '0/3000060'"),
            Local::SetMinLsn("0/3000060".parse().unwrap())
        );
    }

    #[test]
    fn show_and_reset() {
        assert_eq!(ok("SHOW pgdecomp.min_lsn"), Local::Show(Param::MinLsn));
        assert_eq!(ok("show pgdecomp.write_lsn;"), Local::Show(Param::WriteLsn));
        let e = parse("SET pgdecomp.write_lsn = '0/1'")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, "55P02");
        assert_eq!(
            ok("reset pgdecomp.read_your_writes"),
            Local::Reset(Param::ReadYourWrites)
        );
    }

    #[test]
    fn actor_set_show_reset() {
        assert_eq!(
            ok("SET pgdecomp.actor = 'project:42'"),
            Local::SetActor("project:42".into())
        );
        assert_eq!(
            ok("set pgdecomp.actor to 'Group:O''Brien';"),
            Local::SetActor("Group:O'Brien".into())
        );
        assert_eq!(
            ok("SET pgdecomp.actor=user:7"),
            Local::SetActor("user:7".into())
        );
        assert_eq!(ok("SHOW pgdecomp.actor"), Local::Show(Param::Actor));
        assert_eq!(ok("RESET pgdecomp.actor"), Local::Reset(Param::Actor));
        assert_eq!(
            ok("SET pgdecomp.actor TO DEFAULT"),
            Local::Reset(Param::Actor)
        );
    }

    #[test]
    fn other_statements_are_not_local() {
        for sql in [
            "SET search_path = public",
            "SELECT 1",
            "SHOW ALL",
            "RESET ALL",
            "SET LOCAL pgdecomp.read_your_writes = off",
            "",
        ] {
            assert_eq!(parse(sql), None, "{sql}");
        }
    }

    #[test]
    fn bad_values_and_names_are_clear_errors() {
        let e = parse("SET pgdecomp.min_lsn = 'banana'")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, "22023");
        let e = parse("SET pgdecomp.nope = 1").unwrap().unwrap_err();
        assert_eq!(e.code, "42704");
        let e = parse("SET pgdecomp.read_your_writes = maybe")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, "22023");
    }
}
