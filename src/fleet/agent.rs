//! Fleet coordination, the running side: a task per proxy that reads `<prefix>/phase`,
//! watches it, applies each change through `Shared::reload_with_phase` (the reload path every
//! phase switch takes) and keeps this instance's leased record under `<prefix>/instances/`.
//! When etcd is unreachable the instance keeps its phase and retries, logging each failure.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Event, EventType, WatchOptions};
use tokio::sync::{oneshot, watch};

use super::decide::{choose, Applied, Choice, EtcdPhase, InstanceRecord};
use super::etcd::{bounded, Etcd};
use super::{FleetError, FleetSettings};
use crate::shared::Shared;

/// Starts following etcd when `[fleet]` is configured. Waits (bounded by the connect and
/// request timeouts) for the first read, so an instance started after a phase switch serves
/// its first client in the fleet's phase; when etcd does not answer in time it starts with
/// `phase_file`'s phase and the task keeps retrying.
pub async fn start(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let Some(settings) = shared.config.load().fleet.clone() else {
        return;
    };
    let (first_tx, first_rx) = oneshot::channel();
    let bound = settings.connect_timeout + settings.request_timeout * 3;
    tokio::spawn(run(shared, settings, stop, first_tx));
    if tokio::time::timeout(bound, first_rx).await.is_err() {
        tracing::error!(
            waited_seconds = bound.as_secs_f64(),
            "fleet: no phase from etcd yet; starting with phase_file's phase and retrying"
        );
    }
}

/// Follows etcd until `stop`, reconnecting with a doubling pause up to `retry_max`.
async fn run(
    shared: Arc<Shared>,
    s: FleetSettings,
    mut stop: watch::Receiver<bool>,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut pause = Duration::from_millis(500);
    loop {
        let mut reached = false;
        let result = follow(&shared, &s, &mut stop, &mut first, &mut reached).await;
        set_connected(&shared, false);
        let Err(e) = result else { return };
        if reached {
            pause = Duration::from_millis(500);
        }
        let phase = shared.config.load().phase.number();
        tracing::error!(
            etcd = ?s.endpoints,
            error = %e,
            phase,
            retry_seconds = pause.as_secs_f64(),
            "fleet: etcd unreachable; this instance keeps phase {phase} and misses phase switches until etcd answers"
        );
        shared
            .fleet
            .update(|st| st.last_error = Some(e.to_string()));
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        pause = (pause * 2).min(s.retry_max);
    }
}

/// One connection's life: lease, read, register, then watch until an error or `stop`.
async fn follow(
    shared: &Shared,
    s: &FleetSettings,
    stop: &mut watch::Receiver<bool>,
    first: &mut Option<oneshot::Sender<()>>,
    reached: &mut bool,
) -> Result<(), FleetError> {
    let mut etcd = Etcd::connect(s).await?;
    let lease = etcd.grant(s.lease_ttl).await?;
    let (mut keeper, mut acks) =
        bounded(etcd.timeout(), etcd.client.lease_keep_alive(lease)).await?;
    let key = s.phase_key();
    let (phase, now) = etcd.read_phase(&key).await?;
    apply(shared, s, &phase);
    etcd.register(&s.instance_key(), &record(shared, s), lease)
        .await?;
    set_connected(shared, true);
    *reached = true;
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    }
    let options = WatchOptions::new().with_start_revision(now + 1);
    let mut events = bounded(
        etcd.timeout(),
        etcd.client.watch(key.as_str(), Some(options)),
    )
    .await?;
    let period = Duration::from_secs((s.lease_ttl / 3).max(1).unsigned_abs());
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            msg = events.message() => {
                let resp = msg?.ok_or_else(|| FleetError::WatchClosed { key: key.clone() })?;
                if resp.canceled() {
                    return Err(FleetError::WatchClosed { key });
                }
                for event in resp.events() {
                    apply(shared, s, &event_phase(event));
                }
                etcd.register(&s.instance_key(), &record(shared, s), lease).await?;
            }
            _ = tick.tick() => bounded(etcd.timeout(), keeper.keep_alive()).await?,
            ack = acks.message() => match ack? {
                Some(a) if a.ttl() > 0 => {}
                _ => return Err(FleetError::LeaseLost),
            },
            _ = stop.changed() => {
                // Leave the fleet's listing now rather than after the lease's TTL.
                let _ = etcd.revoke(lease).await;
                return Ok(());
            }
        }
    }
}

/// Applies what etcd says through the ordinary reload. A phase that cannot be applied leaves
/// the running one in place; the reason goes to the log, SHOW FLEET and the instance record.
fn apply(shared: &Shared, s: &FleetSettings, phase: &EtcdPhase) {
    let applied = shared.fleet.status().applied;
    let error = match choose(&applied, phase, &s.phase_dir) {
        Choice::Keep => None,
        Choice::Reject { value, reason } => {
            tracing::error!(
                value,
                reason,
                "fleet: etcd holds an unusable phase; keeping the current one"
            );
            Some(format!("phase {value:?} refused: {reason}"))
        }
        Choice::Apply {
            file,
            value,
            revision,
        } => match shared.reload_with_phase(Some(file)) {
            Ok(()) => {
                shared.metrics.fleet_phase_revision.set(revision);
                tracing::info!(
                    value,
                    revision,
                    phase = shared.config.load().phase.number(),
                    "fleet: phase applied from etcd"
                );
                shared
                    .fleet
                    .update(|st| st.applied = Applied::Etcd { value, revision });
                None
            }
            Err(e) => Some(format!(
                "phase {value:?} at revision {revision} not applied: {e}"
            )),
        },
    };
    shared.fleet.update(|st| st.last_error = error);
}

/// A watch event on the phase key: a new value, or the key deleted.
fn event_phase(event: &Event) -> EtcdPhase {
    match (event.event_type(), event.kv()) {
        (EventType::Put, Some(kv)) => EtcdPhase::Set {
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            revision: kv.mod_revision(),
        },
        _ => EtcdPhase::Absent,
    }
}

fn set_connected(shared: &Shared, connected: bool) {
    shared.metrics.fleet_connected.set(i64::from(connected));
    shared.fleet.update(|st| st.connected = connected);
}

/// This instance as the fleet sees it.
fn record(shared: &Shared, s: &FleetSettings) -> InstanceRecord {
    let snap = shared.config.load();
    let st = shared.fleet.status();
    let (source, phase_file) = match &st.applied {
        Applied::Etcd { value, .. } => ("etcd", value.clone()),
        Applied::File => ("file", snap.phase_file.display().to_string()),
    };
    InstanceRecord {
        instance: s.instance.clone(),
        listen: snap.listen.to_string(),
        phase: snap.phase.number(),
        phase_file,
        source: source.into(),
        revision: st.applied.revision(),
        pid: std::process::id(),
        error: st.last_error,
    }
}
