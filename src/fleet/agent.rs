//! Fleet coordination, the running side: a task per proxy that reads `<prefix>/phase`,
//! watches it, applies each change through `Shared::reload_with_phase` (the reload path every
//! phase switch takes) and keeps this instance's leased record under `<prefix>/instances/`.
//! When etcd is unreachable the instance keeps its phase and retries, logging each failure.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Event, EventType, GetOptions, KeyValue, WatchOptions};
use tokio::sync::{oneshot, watch};

use super::decide::{choose, Applied, Choice, EtcdPhase, InstanceRecord};
use super::etcd::{bounded, Etcd};
use super::hold;
use super::{FleetError, FleetSettings};
use crate::shared::hold::UNTIL_ETCD;
use crate::shared::Shared;

/// Starts following etcd when `[fleet]` is configured. Waits (bounded by the connect and
/// request timeouts) for the first read, so an instance started after a phase switch serves
/// its first client in the fleet's phase; when etcd does not answer in time it starts with
/// `phase_file`'s phase and the task keeps retrying.
pub async fn start(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let Some(settings) = shared.config.load().fleet.clone() else {
        return;
    };
    // Until etcd has answered, this instance cannot know whether a cutover has moved the
    // fleet on: it writes no ci rows anywhere (fail closed); reads and main writes go on.
    shared.hold.hold(UNTIL_ETCD);
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
    let mut lost_since = std::time::Instant::now();
    loop {
        let mut reached = false;
        let result = follow(&shared, &s, &mut stop, &mut first, &mut reached).await;
        set_connected(&shared, false);
        let Err(e) = result else { return };
        if reached {
            pause = Duration::from_millis(500);
            lost_since = std::time::Instant::now();
        }
        fail_closed(&shared, &s, lost_since);
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

/// Once etcd has been out of reach for longer than the lease, the fleet no longer lists this
/// instance, so a cutover would not wait for it: it holds its ci writes until etcd answers.
fn fail_closed(shared: &Shared, s: &FleetSettings, lost_since: std::time::Instant) {
    let ttl = Duration::from_secs(s.lease_ttl.unsigned_abs());
    if lost_since.elapsed() >= ttl && shared.hold.held().is_none() {
        shared.hold.hold(UNTIL_ETCD);
        tracing::error!(
            "fleet: etcd out of reach for longer than lease_ttl; ci writes are held until it answers"
        );
    }
}

/// One connection's life: lease, read, register, then watch until an error or `stop`.
async fn follow(
    shared: &Arc<Shared>,
    s: &FleetSettings,
    stop: &mut watch::Receiver<bool>,
    first: &mut Option<oneshot::Sender<()>>,
    reached: &mut bool,
) -> Result<(), FleetError> {
    let mut etcd = Etcd::connect(s).await?;
    let lease = etcd.grant(s.lease_ttl).await?;
    let (mut keeper, mut acks) =
        bounded(etcd.timeout(), etcd.client.lease_keep_alive(lease)).await?;
    let root = format!("{}/", s.prefix);
    let now = catch_up(shared, s, &mut etcd, lease, &root).await?;
    etcd.register(&s.instance_key(), &record(shared, s), lease)
        .await?;
    set_connected(shared, true);
    *reached = true;
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    }
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(now + 1);
    let mut events = bounded(
        etcd.timeout(),
        etcd.client.watch(root.as_str(), Some(options)),
    )
    .await?;
    let period = Duration::from_secs((s.lease_ttl / 3).max(1).unsigned_abs());
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            msg = events.message() => {
                let resp = msg?.ok_or_else(|| FleetError::WatchClosed { key: root.clone() })?;
                if resp.canceled() {
                    return Err(FleetError::WatchClosed { key: root });
                }
                if on_events(shared, s, &etcd, lease, resp.events()) {
                    etcd.register(&s.instance_key(), &record(shared, s), lease).await?;
                }
            }
            _ = tick.tick() => {
                bounded(etcd.timeout(), keeper.keep_alive()).await?;
                // The heartbeat the cutover's preflight looks at.
                etcd.register(&s.instance_key(), &record(shared, s), lease).await?;
            }
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

/// Reads phase and hold in one read (one revision) and applies both; returns that revision.
async fn catch_up(
    shared: &Arc<Shared>,
    s: &FleetSettings,
    etcd: &mut Etcd,
    lease: i64,
    root: &str,
) -> Result<i64, FleetError> {
    let options = GetOptions::new().with_prefix();
    let all = bounded(etcd.timeout(), etcd.client.get(root, Some(options))).await?;
    let now = all.header().map(|h| h.revision()).unwrap_or(0);
    for kv in all.kvs() {
        if kv.key() == s.phase_key().as_bytes() {
            apply(shared, s, &kv_phase(kv));
        }
    }
    let hold_key = s.cutover_key("hold");
    match all.kvs().iter().find(|kv| kv.key() == hold_key.as_bytes()) {
        Some(kv) => hold::hold(
            shared,
            &etcd.client,
            s,
            lease,
            hold::parse_epoch(kv.value()),
        ),
        None => hold::release(shared, &etcd.client, s),
    }
    Ok(now)
}

/// Carries out watched changes in revision order (a switch and its release arrive in one
/// revision, phase first). Returns whether this instance's record changed.
fn on_events(
    shared: &Arc<Shared>,
    s: &FleetSettings,
    etcd: &Etcd,
    lease: i64,
    events: &[Event],
) -> bool {
    let (phase_key, hold_key) = (s.phase_key(), s.cutover_key("hold"));
    let mut changed = false;
    for event in events {
        let Some(kv) = event.kv() else { continue };
        if kv.key() == phase_key.as_bytes() {
            apply(shared, s, &event_phase(event));
            changed = true;
        } else if kv.key() == hold_key.as_bytes() {
            match event.event_type() {
                EventType::Put => hold::hold(
                    shared,
                    &etcd.client,
                    s,
                    lease,
                    hold::parse_epoch(kv.value()),
                ),
                EventType::Delete => hold::release(shared, &etcd.client, s),
            }
            changed = true;
        }
    }
    changed
}

fn kv_phase(kv: &KeyValue) -> EtcdPhase {
    EtcdPhase::Set {
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        revision: kv.mod_revision(),
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
                shared.topology.recheck();
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
        (EventType::Put, Some(kv)) => kv_phase(kv),
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
        heartbeat_ms: crate::cutover::unix_ms(std::time::SystemTime::now()),
        last_violation_ms: shared
            .last_violation_ms
            .load(std::sync::atomic::Ordering::Relaxed),
        held: shared.hold.held(),
    }
}
