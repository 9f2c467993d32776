//! The cutover's last steps, forward only: switch the fleet to phase 7 and release its held
//! ci writes in one etcd transaction (each instance applies the phase before it lets them
//! go), then wait, bounded, for every instance to report phase 7. Also the retry loop of the
//! forward-only steps.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::coordinator::Run;
use super::record::Report;
use super::steps::{Outcome, Step};

const RETRY: Duration = Duration::from_millis(200);
const POLL: Duration = Duration::from_millis(20);

/// One attempt of a forward-only step.
pub(super) type Attempt<'r> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'r>>;

impl<'a> Run<'a> {
    /// Tries `attempt` until it succeeds: after the promotion there is no way back. Says when
    /// the step is overdue, and again every time its bound passes.
    pub(super) async fn retry(
        &mut self,
        step: Step,
        since: Instant,
        mut attempt: impl for<'r> FnMut(&'r mut Run<'a>) -> Attempt<'r>,
    ) {
        let bound = step.timeout(&self.c, self.fleet.request_timeout);
        let mut next_warning = since + bound;
        loop {
            let result = attempt(self).await;
            let Err(e) = result else { return };
            if Instant::now() >= next_warning {
                next_warning += bound;
                self.say(&format!(
                    "{:<9} overdue ({:.0} s): {e}; retrying (the cutover only goes forward now)",
                    step.label(),
                    since.elapsed().as_secs_f64()
                ));
                tracing::error!(step = step.label(), error = %e, "cutover step overdue; retrying");
            }
            // The fence is a cheap read: look often, the held writes wait for it.
            let pause = if step == Step::Fence { POLL } else { RETRY };
            tokio::time::sleep(pause).await;
        }
    }

    pub(super) async fn switch(&mut self) -> Report {
        self.enter(Step::Switch).await;
        let since = Instant::now();
        self.close_completed();
        self.retry(Step::Switch, since, |run| {
            Box::pin(async move {
                let record = run.record.clone();
                run.store
                    .finish(Some("phase-7.toml"), &record)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        })
        .await;
        self.close_completed();
        self.done(
            Step::Switch,
            since,
            "etcd: phase-7.toml stored and the hold lifted in one revision".into(),
        );
        self.enter_quietly(Step::Release);
        let since = Instant::now();
        let detail = self.wait_phase_7().await;
        self.done(Step::Release, since, detail);
        self.report.clone()
    }

    fn close_completed(&mut self) {
        self.record.step = Step::Release.label().into();
        self.close(Outcome::Completed, None);
    }

    /// The record is final already: the release step is only observed, not written.
    fn enter_quietly(&mut self, step: Step) {
        if let Some(m) = self.metrics {
            m.at(Some(step));
        }
        self.say(&format!("{:<9} ...", step.label()));
    }

    /// Until every registered instance runs phase 7 and holds nothing.
    async fn wait_phase_7(&mut self) -> String {
        let deadline = Instant::now() + self.c.switch_timeout;
        loop {
            let prefix = self.fleet.instances_prefix();
            let behind: Vec<String> = match self.store.etcd.instances(&prefix).await {
                Ok(all) => all
                    .into_iter()
                    .filter(|i| i.phase != 7 || i.held.is_some())
                    .map(|i| i.instance)
                    .collect(),
                Err(e) => vec![format!("(etcd: {e})")],
            };
            if behind.is_empty() {
                return "every instance runs phase 7 and holds nothing".into();
            }
            if Instant::now() >= deadline {
                let msg = format!("not yet in phase 7 after cutover.switch_timeout: {}; they switch when they next reach etcd", behind.join(", "));
                tracing::error!(instances = ?behind, "cutover: instances not in phase 7 yet");
                return msg;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
