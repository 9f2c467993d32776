//! The cutover's waits before the point of no return: the hold barrier (every instance holds
//! its ci writes and has none running), the main primary's WAL position, and the CI standby's
//! catch-up to it. Each is bounded; each fails with the reason the abort reports.

use std::time::{Duration, Instant};

use super::coordinator::{Failed, Run};
use super::unix_ms;

/// How often the catch-up reports the remaining lag.
const SAY_EVERY: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(10);
const TICK: Duration = Duration::from_millis(200);

fn etcd(e: crate::fleet::FleetError) -> Failed {
    Failed(format!("etcd unreachable: {e}"))
}

impl Run<'_> {
    /// An operator's abort request, or etcd lost: either ends the wait (looked at every TICK).
    async fn interrupted(&mut self, last: &mut Instant) -> Result<(), Failed> {
        if *self.lost.borrow() {
            return Err(Failed(
                "etcd lost: the coordinator's lease could not be renewed".into(),
            ));
        }
        if last.elapsed() < TICK {
            return Ok(());
        }
        *last = Instant::now();
        match self.store.abort_requested().await.map_err(etcd)? {
            Some(reason) => Err(Failed(format!("aborted by the operator: {reason}"))),
            None => Ok(()),
        }
    }

    /// Every instance registered at the preflight or now holds and has drained.
    pub(super) async fn hold(&mut self) -> Result<String, Failed> {
        let epoch = self.record.epoch;
        self.store.hold(epoch, self.lease).await.map_err(etcd)?;
        self.hold_started = Some(Instant::now());
        let deadline = Instant::now() + self.c.hold_timeout;
        let mut last = Instant::now();
        loop {
            let mut expected = self.report.instances.clone();
            let now = self
                .store
                .etcd
                .instances(&self.fleet.instances_prefix())
                .await
                .map_err(etcd)?;
            for i in now {
                if !expected.contains(&i.instance) {
                    expected.push(i.instance);
                }
            }
            let acks = self.store.acks(epoch).await.map_err(etcd)?;
            let running: usize = acks.iter().map(|(_, a)| a.running).sum();
            let missing: Vec<&String> = expected
                .iter()
                .filter(|n| !acks.iter().any(|(name, a)| name == *n && a.drained))
                .collect();
            if missing.is_empty() {
                self.report.instances = expected.clone();
                return Ok(format!(
                    "{} instances hold their ci writes, none running",
                    expected.len()
                ));
            }
            self.interrupted(&mut last).await?;
            if Instant::now() >= deadline {
                let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                return Err(Failed(format!(
                    "instance(s) {} did not confirm the hold within cutover.hold_timeout = {:?} ({running} ci transactions still running on the others' count)",
                    names.join(", "),
                    self.c.hold_timeout
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub(super) async fn read_lsn(&mut self) -> Result<String, Failed> {
        let addr = self.servers.main_primary.clone();
        self.lsn = self.ops.main_lsn(&addr).await.map_err(Failed)?;
        let lsn = self.lsn.to_string();
        self.record.lsn = Some(lsn.clone());
        self.report.lsn = Some(lsn.clone());
        Ok(format!("main primary {addr} at {lsn}"))
    }

    /// Until the CI standby leader has replayed the recorded position.
    pub(super) async fn catchup(&mut self) -> Result<String, Failed> {
        let addr = self.servers.ci_leader.clone();
        let since = Instant::now();
        let deadline = since + self.c.catchup_timeout;
        let (mut first, mut said, mut last) = (None, Instant::now(), Instant::now());
        loop {
            let replayed = match self.ops.replayed(&addr).await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(Failed(format!("the CI leader {addr} left recovery during the catch-up (promoted by someone else?)"))),
                Err(e) => return Err(Failed(format!("the CI standby leader stopped answering during the catch-up: {e}"))),
            };
            let behind = self.lsn.0.saturating_sub(replayed.0);
            first.get_or_insert(behind);
            if replayed >= self.lsn {
                break;
            }
            if said.elapsed() >= SAY_EVERY {
                said = Instant::now();
                self.say(&format!(
                    "catchup   {behind} bytes to replay on {addr} (at {replayed})"
                ));
            }
            self.interrupted(&mut last).await?;
            if Instant::now() >= deadline {
                return Err(Failed(format!(
                    "the catch-up timed out: after cutover.catchup_timeout = {:?} the CI standby leader {addr} had replayed {replayed}, {behind} bytes short of {}",
                    self.c.catchup_timeout, self.lsn
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        let secs = since.elapsed().as_secs_f64();
        self.report.catchup_seconds = secs;
        self.report.catchup_bytes = first.unwrap_or(0);
        self.record.catchup_seconds = Some(secs);
        self.record.updated_ms = unix_ms(std::time::SystemTime::now());
        if let Some(m) = self.metrics {
            m.catchup_seconds.set(secs);
        }
        Ok(format!(
            "{addr} replayed {} ({} bytes behind at the start)",
            self.lsn,
            first.unwrap_or(0)
        ))
    }
}
