//! The admin console's cutover commands: CUTOVER and CUTOVER DRY RUN run the coordinator in
//! this proxy (as a task of its own, so a console that disconnects cannot stop a cutover half
//! way) and answer with its steps; CUTOVER ABORT asks a running one to abort; SHOW CUTOVER
//! reads the record in etcd.

use crate::cutover::{cli, Outcome, Record, Report};
use crate::protocol::backend::{PgError, Table};
use crate::shared::Shared;

use super::Reply;

/// Runs the cutover commands; `None` for any other command.
pub async fn execute(upper: &[String], shared: &Shared) -> Option<Result<Reply, PgError>> {
    let words: Vec<&str> = upper.iter().map(String::as_str).collect();
    let r = match words.as_slice() {
        ["CUTOVER"] => run(shared, false).await,
        ["CUTOVER", "DRY", "RUN"] => run(shared, true).await,
        ["CUTOVER", "ABORT"] => abort(shared).await,
        ["SHOW", "CUTOVER"] => show(shared).await,
        _ => return None,
    };
    Some(r)
}

fn not_possible(message: String) -> PgError {
    PgError::error("55000", message)
}

async fn run(shared: &Shared, dry_run: bool) -> Result<Reply, PgError> {
    let snap = shared.config.load_full();
    let metrics = shared.metrics.cutover.clone();
    let task = tokio::spawn(async move {
        let mut progress = |line: &str| tracing::info!("cutover: {line}");
        crate::cutover::run(snap, dry_run, Some(&metrics), &mut progress).await
    });
    let report = task
        .await
        .map_err(|e| not_possible(format!("the cutover task failed: {e}")))?;
    reply(report)
}

fn reply(report: Report) -> Result<Reply, PgError> {
    let reason = report.reason.clone().unwrap_or_default();
    match report.outcome() {
        Some(Outcome::Refused) => return Err(not_possible(format!("cutover refused: {reason}"))),
        Some(Outcome::Aborted) => return Err(not_possible(format!("cutover aborted: {reason}"))),
        _ => {}
    }
    let mut t = Table::new(&["step", "seconds", "detail"]);
    for s in &report.steps {
        t.row(vec![
            Some(s.step.to_string()),
            Some(format!("{:.3}", s.seconds)),
            Some(s.detail.clone()),
        ]);
    }
    t.row(vec![
        Some(format!("{} (epoch {})", report.outcome, report.epoch)),
        Some(format!("{:.3}", report.hold_seconds)),
        Some(format!(
            "ci writes held {:.3} s; catch-up {:.3} s from {} bytes; lsn {}",
            report.hold_seconds,
            report.catchup_seconds,
            report.catchup_bytes,
            report.lsn.as_deref().unwrap_or("-")
        )),
    ]);
    Ok(Reply::Rows(t))
}

async fn abort(shared: &Shared) -> Result<Reply, PgError> {
    let snap = shared.config.load_full();
    match cli::request_abort(&snap, "CUTOVER ABORT on the admin console").await {
        Ok(Some(r)) if r.running() => Ok(Reply::Done("CUTOVER ABORT")),
        Ok(_) => Err(not_possible("no cutover is running".into())),
        Err(e) => Err(not_possible(format!("cutover abort not stored: {e}"))),
    }
}

async fn show(shared: &Shared) -> Result<Reply, PgError> {
    let snap = shared.config.load_full();
    let record = cli::status(&snap)
        .await
        .map_err(|e| not_possible(format!("SHOW CUTOVER: {e}")))?;
    let mut t = Table::new(&[
        "epoch",
        "dry_run",
        "step",
        "outcome",
        "reason",
        "lsn",
        "hold_seconds",
        "catchup_seconds",
        "coordinator",
        "held_here",
    ]);
    if let Some(r) = record {
        t.row(row(&r, shared.hold.held()));
    }
    Ok(Reply::Rows(t))
}

fn row(r: &Record, held: Option<u64>) -> Vec<Option<String>> {
    let f = |v: Option<f64>| v.map(|v| format!("{v:.3}"));
    vec![
        Some(r.epoch.to_string()),
        Some(r.dry_run.to_string()),
        Some(r.step.clone()),
        Some(r.outcome.clone()),
        r.reason.clone(),
        r.lsn.clone(),
        f(r.hold_seconds),
        f(r.catchup_seconds),
        Some(r.coordinator.clone()),
        Some(held.is_some().to_string()),
    ]
}
