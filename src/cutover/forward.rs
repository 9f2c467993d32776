//! The cutover's endings: refused at preflight, aborted before the promotion (the fleet is
//! released on its phase), a rehearsal released, and the forward-only part from the point of
//! no return: promote, fence, switch the fleet to phase 7 and release it in one etcd
//! transaction, then wait for every instance to report phase 7.

use std::time::{Duration, Instant, SystemTime};

use super::coordinator::Run;
use super::record::{Record, Report};
use super::steps::{Outcome, Step};
use super::unix_ms;

const RETRY: Duration = Duration::from_millis(200);

impl Run<'_> {
    pub(super) fn close(&mut self, outcome: Outcome, reason: Option<String>) {
        self.record.outcome = outcome.label().into();
        self.record.reason = reason.clone();
        self.record.updated_ms = unix_ms(SystemTime::now());
        let held = self.hold_started.map_or(0.0, |h| h.elapsed().as_secs_f64());
        self.record.hold_seconds = Some(held);
        self.report.hold_seconds = held;
        self.report.outcome = outcome.label();
        self.report.reason = reason;
        self.report.epoch = self.record.epoch;
    }

    /// Writes the ending; when etcd does not take it, says what the fleet will do instead.
    async fn end(&mut self, phase: Option<&str>, bound: Duration) -> Result<(), String> {
        let deadline = Instant::now() + bound;
        loop {
            let record = self.record.clone();
            match self.store.finish(phase, &record).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
                Err(e) => tracing::warn!(error = %e, "cutover: etcd did not take the ending yet"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    pub(super) async fn refused(&mut self, reason: String) -> Report {
        self.say(&format!("refused: {reason}"));
        tracing::warn!(reason, "cutover refused");
        self.close(Outcome::Refused, Some(reason));
        if self.record.epoch > 0 {
            let _ = self.end(None, self.fleet.request_timeout).await;
        }
        self.report.clone()
    }

    pub(super) async fn abort(&mut self, step: Step, reason: String) -> Report {
        let reason = format!("{} failed: {reason}", step.label());
        self.say(&format!(
            "aborting: {reason}; releasing the held ci writes on the current phase"
        ));
        tracing::error!(
            epoch = self.record.epoch,
            reason,
            "cutover aborted before the promotion"
        );
        self.close(Outcome::Aborted, Some(reason.clone()));
        if let Err(e) = self.end(None, self.fleet.request_timeout * 3).await {
            let more = format!(
                "{reason}; etcd did not take the abort ({e}): every instance keeps its ci writes held until etcd answers and this coordinator's lease ({} s) has expired, then resumes the current phase",
                self.fleet.lease_ttl
            );
            self.say(&more);
            self.report.reason = Some(more);
        }
        self.say("aborted; nothing was promoted");
        self.report.clone()
    }

    pub(super) async fn release_rehearsal(&mut self) -> Report {
        self.enter(Step::Release).await;
        let since = Instant::now();
        self.close(Outcome::Rehearsed, None);
        if let Err(e) = self.end(None, self.fleet.request_timeout * 3).await {
            return self.abort(Step::Release, format!("etcd: {e}")).await;
        }
        self.close(Outcome::Rehearsed, None);
        self.done(
            Step::Release,
            since,
            "the fleet goes on in its phase".into(),
        );
        self.report.clone()
    }

    /// A cutover left past its point of no return by a coordinator that went away.
    pub(super) async fn resume(&mut self, r: Record) -> Report {
        self.say(&format!(
            "resuming cutover epoch {} past its point of no return (it stopped at {})",
            r.epoch, r.step
        ));
        self.record = r;
        self.report.epoch = self.record.epoch;
        self.report.lsn = self.record.lsn.clone();
        self.hold_started = Some(Instant::now());
        match self.ops.servers().await {
            Ok(s) => self.servers = s,
            Err(e) => self.say(&format!("servers not found yet: {e}")),
        }
        self.promote_onward().await
    }

    /// From the point of no return: the hold outlives this coordinator, then promote onward.
    pub(super) async fn forward(&mut self) -> Report {
        self.enter(Step::Promote).await;
        self.record.committed = true;
        let record = self.record.clone();
        match self.store.commit(self.record.epoch, &record).await {
            Ok(true) => {}
            Ok(false) => {
                self.record.committed = false;
                let why = "this coordinator lost its lock in etcd (its lease expired, which released the fleet)".into();
                return self.abort(Step::Promote, why).await;
            }
            Err(e) => {
                self.record.committed = false;
                return self
                    .abort(Step::Promote, format!("etcd unreachable: {e}"))
                    .await;
            }
        }
        self.say("point of no return: the fleet stays held until it runs phase 7");
        self.promote_onward().await
    }

    async fn promote_onward(&mut self) -> Report {
        let since = Instant::now();
        self.retry(Step::Promote, since, |run| {
            Box::pin(async move {
                let leader = run.servers.ci_leader.clone();
                run.ops.promote(&leader).await
            })
        })
        .await;
        self.done(Step::Promote, since, "promotion requested".into());
        self.enter(Step::Fence).await;
        let since = Instant::now();
        self.retry(Step::Fence, since, |run| {
            Box::pin(async move {
                run.servers = run.ops.servers().await?;
                let leader = run.servers.ci_leader.clone();
                match run.ops.writable(&leader).await? {
                    true => Ok(()),
                    false => Err(format!("{leader} is still in recovery")),
                }
            })
        })
        .await;
        let leader = self.servers.ci_leader.clone();
        self.done(Step::Fence, since, format!("CI leader {leader} writes"));
        self.switch().await
    }
}
