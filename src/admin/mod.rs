//! The admin console beside the pipeline: the virtual database `pgdecomp`, reachable with psql
//! by the configured admin users, answering PgBouncer-style SHOW commands and RELOAD.

mod cutover;
mod show;

use std::time::Duration;

use crate::protocol::backend::{PgError, Table};
use crate::route::Target;
use crate::shared::control::KillTarget;
use crate::shared::Shared;

/// What one admin command produced.
pub enum Reply {
    Rows(Table),
    Done(&'static str),
}

/// How long PAUSE waits for running transactions before it reports the ones left.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);

fn targets(arg: Option<&str>) -> Result<Vec<Target>, PgError> {
    match arg {
        None => Ok(Target::ALL.to_vec()),
        Some(a) => Target::parse(&a.to_ascii_lowercase())
            .map(|t| vec![t])
            .ok_or_else(|| {
                PgError::error(
                    "42601",
                    format!("unknown target {a}; use main, main_replica, ci or ci_replica"),
                )
            }),
    }
}

/// Runs one admin command.
pub async fn execute(sql: &str, shared: &Shared) -> Result<Reply, PgError> {
    let words: Vec<&str> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let verb = upper.first().map(String::as_str).unwrap_or("");
    let arg = words.get(1).copied();
    if let Some(reply) = cutover::execute(&upper, shared).await {
        return reply;
    }
    match (verb, words.len()) {
        ("SHOW", 2) => show::show(&upper[1], shared).map(Reply::Rows),
        ("RELOAD", 1) => shared
            .reload()
            .map(|()| Reply::Done("RELOAD"))
            .map_err(|e| PgError::error("F0000", format!("reload failed, the previous configuration stays live: {e}"))),
        ("PAUSE", 1 | 2) => {
            let t = targets(arg)?;
            match shared.control.pause(&t, PAUSE_TIMEOUT).await {
                0 => Ok(Reply::Done("PAUSE")),
                n => Err(PgError::error(
                    "57014",
                    format!("PAUSE timed out: {n} transactions still running; new ones stay held until RESUME"),
                )),
            }
        }
        ("RESUME", 1 | 2) => {
            shared.control.resume(&targets(arg)?);
            Ok(Reply::Done("RESUME"))
        }
        ("KILL", 1 | 2) => {
            let which = match arg {
                None => KillTarget::All,
                Some(a) => match a.parse::<u64>() {
                    Ok(id) => KillTarget::Client(id),
                    Err(_) => KillTarget::Target(targets(Some(a))?[0]),
                },
            };
            let n = shared.control.kill(which);
            tracing::warn!(?which, clients = n, "KILL from the admin console");
            Ok(Reply::Done("KILL"))
        }
        ("SHUTDOWN", 1) => {
            tracing::warn!("SHUTDOWN from the admin console");
            shared.shutdown.send_replace(true);
            Ok(Reply::Done("SHUTDOWN"))
        }
        ("", 0) => Ok(Reply::Done("")),
        _ => Err(PgError::error(
            "42601",
            format!(
                "unsupported admin command: {sql:?}; try SHOW VERSION|PHASE|FLEET|POOLS|SERVERS|CLIENTS|STATS|CONFIG|DATABASES|SCHEMAS|VIOLATIONS, \
                 RELOAD, PAUSE [target], RESUME [target], KILL [target|client id], SHUTDOWN"
            ),
        )),
    }
}
