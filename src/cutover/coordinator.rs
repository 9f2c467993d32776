//! The cutover's coordinator: carries out the steps of `steps.rs` against etcd (`store.rs`)
//! and the servers (`ops.rs`), one after the other, each bounded, reporting progress as it
//! goes. Runs in `pgdecomp cutover` or, for the admin command CUTOVER, inside a proxy. Before
//! the promotion any failure aborts and releases the fleet on its phase; `forward.rs` takes
//! over from the point of no return.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::ops::{Ops, Servers};
use super::preflight::{check, Facts};
use super::record::{Record, Report};
use super::settings::CutoverSettings;
use super::steps::{Outcome, Step};
use super::store::{Busy, Store};
use super::unix_ms;
use crate::config::{load_phase, Snapshot};
use crate::fleet::etcd::{bounded, Etcd};
use crate::fleet::{resolve_phase_file, EtcdPhase, FleetSettings};
use crate::metrics::CutoverMetrics;
use crate::topology::Lsn;

/// Where progress lines go: the terminal, the log, or both.
pub type Progress<'a> = &'a mut (dyn FnMut(&str) + Send);

/// Why a step did not complete.
pub(super) struct Failed(pub String);

/// One cutover in progress.
pub(super) struct Run<'a> {
    pub fleet: FleetSettings,
    pub c: CutoverSettings,
    pub store: Store,
    pub ops: Ops,
    pub lease: i64,
    /// Turns true when the coordinator's lease could not be kept alive.
    pub lost: watch::Receiver<bool>,
    pub record: Record,
    pub report: Report,
    pub started: Instant,
    pub hold_started: Option<Instant>,
    pub servers: Servers,
    pub lsn: Lsn,
    pub progress: Progress<'a>,
    pub metrics: Option<&'a CutoverMetrics>,
}

/// Runs a cutover (or with `dry_run` a rehearsal) to its end and reports how it went.
pub async fn run(
    snap: Arc<Snapshot>,
    dry_run: bool,
    metrics: Option<&CutoverMetrics>,
    progress: Progress<'_>,
) -> Report {
    let (fleet, ops, store, lease, lost) = match connect(&snap).await {
        Ok(parts) => parts,
        Err(reason) => {
            return Report {
                dry_run,
                outcome: Outcome::Refused.label(),
                reason: Some(reason),
                ..Report::default()
            }
        }
    };
    let mut run = Run {
        c: snap.cutover.clone(),
        fleet,
        store,
        ops,
        lease,
        lost,
        record: Record::default(),
        report: Report {
            dry_run,
            ..Report::default()
        },
        started: Instant::now(),
        hold_started: None,
        servers: Servers::default(),
        lsn: Lsn::default(),
        progress,
        metrics,
    };
    run.record = run.new_record(dry_run);
    let report = run.go().await;
    let _ = run.store.etcd.revoke(run.lease).await;
    if let Some(m) = run.metrics {
        m.at(None);
        if let Some(o) = report.outcome() {
            m.outcomes.with_label_values(&[o.label()]).inc();
        }
    }
    report
}

type Parts = (FleetSettings, Ops, Store, i64, watch::Receiver<bool>);

/// What a cutover needs before its first step; `Err` is the reason it is refused.
async fn connect(snap: &Snapshot) -> Result<Parts, String> {
    let fleet = snap.fleet.clone().ok_or_else(|| {
        format!(
            "the cutover coordinates the fleet through etcd: {} has no [fleet] section",
            snap.source.display()
        )
    })?;
    let ops = Ops::new(snap)?;
    let etcd = Etcd::connect(&fleet)
        .await
        .map_err(|e| format!("etcd unreachable: {e}"))?;
    let mut store = Store {
        etcd,
        s: fleet.clone(),
    };
    let (lease, lost) = keep_lease(&mut store.etcd, fleet.lease_ttl)
        .await
        .map_err(|e| format!("etcd: {e}"))?;
    Ok((fleet, ops, store, lease, lost))
}

/// A lease for the lock and the hold, kept alive by a task until the lease is revoked or
/// cannot be renewed (then `lost` turns true).
async fn keep_lease(
    etcd: &mut Etcd,
    ttl: i64,
) -> Result<(i64, watch::Receiver<bool>), crate::fleet::FleetError> {
    let lease = etcd.grant(ttl).await?;
    let bound = etcd.timeout();
    let (mut keeper, mut acks) = bounded(bound, etcd.client.lease_keep_alive(lease)).await?;
    let (tx, rx) = watch::channel(false);
    let period = Duration::from_millis((ttl.unsigned_abs() * 1000 / 3).max(500));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let kept = match bounded(bound, keeper.keep_alive()).await {
                Ok(()) => matches!(
                    tokio::time::timeout(bound, acks.message()).await,
                    Ok(Ok(Some(a))) if a.ttl() > 0
                ),
                Err(_) => false,
            };
            if !kept {
                tx.send_replace(true);
                return;
            }
        }
    });
    Ok((lease, rx))
}

impl Run<'_> {
    fn new_record(&self, dry_run: bool) -> Record {
        let now = unix_ms(SystemTime::now());
        Record {
            dry_run,
            step: Step::Preflight.label().into(),
            outcome: "running".into(),
            coordinator: format!("{}:{}", self.fleet.instance, std::process::id()),
            started_ms: now,
            updated_ms: now,
            ..Record::default()
        }
    }

    pub(super) fn say(&mut self, line: &str) {
        let at = self.started.elapsed().as_secs_f64();
        (self.progress)(&format!("[{at:8.3} s] {line}"));
    }

    /// Marks `step` as current: metrics, the record in etcd, a progress line.
    pub(super) async fn enter(&mut self, step: Step) {
        if let Some(m) = self.metrics {
            m.at(Some(step));
        }
        self.record.step = step.label().into();
        self.record.updated_ms = unix_ms(SystemTime::now());
        let record = self.record.clone();
        if let Err(e) = self.store.put_record(&record).await {
            tracing::warn!(error = %e, step = step.label(), "cutover: the record in etcd was not updated");
        }
        tracing::info!(
            epoch = self.record.epoch,
            step = step.label(),
            "cutover step"
        );
        self.say(&format!("{:<9} ...", step.label()));
    }

    pub(super) fn done(&mut self, step: Step, since: Instant, detail: String) {
        let secs = since.elapsed().as_secs_f64();
        self.say(&format!(
            "{:<9} ok in {secs:.3} s{}{detail}",
            step.label(),
            if detail.is_empty() { "" } else { ": " }
        ));
        self.report.add(step, secs, detail);
    }

    async fn go(&mut self) -> Report {
        let epoch = match self.store.begin(self.lease, &self.record).await {
            Ok(Ok(epoch)) => epoch,
            Ok(Err(Busy::Stranded(r))) => return self.resume(r).await,
            Ok(Err(Busy::Locked(r))) => {
                let what = r.map_or("no record yet".into(), |r| {
                    format!("epoch {} at step {} by {}", r.epoch, r.step, r.coordinator)
                });
                return self
                    .refused(format!("a cutover is already in progress ({what})"))
                    .await;
            }
            Err(e) => return self.refused(format!("etcd: {e}")).await,
        };
        self.record.epoch = epoch;
        self.report.epoch = epoch;
        self.say(&format!(
            "cutover epoch {epoch}{}",
            if self.record.dry_run {
                " (dry run: no promotion, no switch)"
            } else {
                ""
            }
        ));
        if let Err(Failed(reason)) = self.preflight().await {
            return self.refused(reason).await;
        }
        for step in [Step::Hold, Step::ReadLsn, Step::Catchup] {
            if let Err(Failed(reason)) = self.step(step).await {
                return self.abort(step, reason).await;
            }
        }
        if self.record.dry_run {
            return self.release_rehearsal().await;
        }
        self.forward().await
    }

    async fn step(&mut self, step: Step) -> Result<(), Failed> {
        self.enter(step).await;
        let since = Instant::now();
        let result = match step {
            Step::Hold => self.hold().await,
            Step::ReadLsn => self.read_lsn().await,
            Step::Catchup => self.catchup().await,
            _ => Ok(String::new()),
        };
        match result {
            Ok(detail) => {
                self.done(step, since, detail);
                Ok(())
            }
            Err(Failed(reason)) => {
                // The report shows how long the failed step ran too.
                let secs = since.elapsed().as_secs_f64();
                if step == Step::Catchup {
                    self.report.catchup_seconds = secs;
                }
                self.report.add(step, secs, format!("failed: {reason}"));
                Err(Failed(reason))
            }
        }
    }

    async fn preflight(&mut self) -> Result<(), Failed> {
        self.enter(Step::Preflight).await;
        let since = Instant::now();
        let facts = self.facts().await.map_err(Failed)?;
        check(&facts).map_err(Failed)?;
        self.report.instances = facts.instances.iter().map(|i| i.instance.clone()).collect();
        let detail = format!(
            "phase {}, {} instances, CI lag {} bytes",
            facts.phase.unwrap_or(0),
            facts.instances.len(),
            facts.lag_bytes
        );
        self.done(Step::Preflight, since, detail);
        Ok(())
    }

    async fn facts(&mut self) -> Result<Facts, String> {
        let e = |e: crate::fleet::FleetError| format!("etcd: {e}");
        let (stored, _) = self
            .store
            .etcd
            .read_phase(&self.fleet.phase_key())
            .await
            .map_err(e)?;
        let phase = match &stored {
            EtcdPhase::Set { value, .. } => Some(self.load_phase(value)?),
            _ => None,
        };
        let ci_write_percent = phase
            .as_ref()
            .map_or(100.0, |p| p.ci_write_rollout().percent);
        let phase = phase.map(|p| p.number());
        self.phase_number("phase-7.toml")
            .and_then(|n| {
                if n == 7 {
                    Ok(())
                } else {
                    Err(format!("phase-7.toml holds phase {n}"))
                }
            })
            .map_err(|m| format!("phase 7 cannot be switched to: {m}"))?;
        let instances = self
            .store
            .etcd
            .instances(&self.fleet.instances_prefix())
            .await
            .map_err(e)?;
        self.servers = self.ops.servers().await?;
        let main = self.ops.main_lsn(&self.servers.main_primary).await?;
        let replayed = self.ops.replayed(&self.servers.ci_leader).await?;
        Ok(Facts {
            dry_run: self.record.dry_run,
            phase,
            now_ms: unix_ms(SystemTime::now()),
            instances,
            expected: self.c.instances.clone(),
            heartbeat_bound_ms: (self.fleet.lease_ttl.unsigned_abs() * 1000).max(2000),
            violation_window_ms: self.c.violation_window.as_millis() as u64,
            members: std::mem::take(&mut self.servers.members),
            patroni_down: self.ops.down_endpoints().await,
            ci_standby: replayed.is_some(),
            lag_bytes: replayed.map_or(0, |r| main.0.saturating_sub(r.0)),
            max_lag_bytes: self.c.max_lag_bytes,
            ci_write_percent,
        })
    }

    fn load_phase(&self, value: &str) -> Result<crate::route::Phase, String> {
        let file = resolve_phase_file(&self.fleet.phase_dir, value).map_err(|e| e.to_string())?;
        load_phase(&file).map_err(|e| e.to_string())
    }

    fn phase_number(&self, value: &str) -> Result<u8, String> {
        self.load_phase(value).map(|p| p.number())
    }
}
