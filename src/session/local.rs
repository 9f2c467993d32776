//! Settings the proxy answers itself, before classify: `SET`, `RESET` and `SHOW` of the
//! `pgdecomp.*` parameters. They describe the client's session with the proxy, so they never
//! reach a server (where they would stick to a pooled connection another client gets next).

use crate::topology::Lsn;

/// A `pgdecomp.*` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    SetReadYourWrites(bool),
    SetMinLsn(Lsn),
    /// RESET of one parameter (`None`: RESET ALL is left to the server, so it is not here).
    Reset(Param),
    Show(Param),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    ReadYourWrites,
    MinLsn,
}

impl Param {
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadYourWrites => "pgdecomp.read_your_writes",
            Self::MinLsn => "pgdecomp.min_lsn",
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
        _ => {
            return err(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            )
        }
    };
    match verb.as_str() {
        "SHOW" if value.is_none() => Some(Ok(Local::Show(param))),
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

/// Answers `first` when it is a `pgdecomp.*` command; returns false (and does nothing) when it
/// is not. Inside a transaction the command is answered the same way: it changes proxy state
/// only, which a ROLLBACK does not undo (documented).
pub fn answer(c: &mut super::relay::Client, first: &crate::protocol::frame::Frame) -> bool {
    use crate::protocol::backend::{self, PgError};
    let Some(sql) = crate::protocol::frontend::query_sql(first) else {
        return false;
    };
    let Some(cmd) = parse(sql) else {
        return false;
    };
    let out = &mut c.io.wbuf;
    match cmd {
        Ok(Local::SetReadYourWrites(on)) => {
            c.ryw.enabled = on;
            if !on {
                c.ryw.clear();
            }
            backend::command_complete("SET", out);
        }
        Ok(Local::SetMinLsn(lsn)) => {
            c.ryw.require(lsn, std::time::Instant::now());
            backend::command_complete("SET", out);
        }
        Ok(Local::Reset(Param::ReadYourWrites)) => {
            c.ryw.enabled = c.routing.snap.health.read_your_writes;
            backend::command_complete("RESET", out);
        }
        Ok(Local::Reset(Param::MinLsn)) => {
            c.ryw.clear();
            backend::command_complete("RESET", out);
        }
        Ok(Local::Show(p)) => {
            let value = match p {
                Param::ReadYourWrites => if c.ryw.enabled { "on" } else { "off" }.to_string(),
                Param::MinLsn => c.ryw.required().map(|l| l.to_string()).unwrap_or_default(),
            };
            let mut t = crate::admin::Table::new(&[p.name()]);
            t.row(vec![Some(value)]);
            t.encode(out);
        }
        Err(e) => PgError::error(e.code, e.message).encode(out),
    }
    let status = if c.routing.held_begin.is_some() {
        b'T'
    } else {
        b'I'
    };
    backend::ready_for_query(status, out);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            ok("reset pgdecomp.read_your_writes"),
            Local::Reset(Param::ReadYourWrites)
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
