//! Fleet coordination, the instance's side of a cutover's hold: etcd's `<prefix>/cutover/hold`
//! holds this instance's ci writes (`shared/hold.rs`); the instance confirms under
//! `<prefix>/cutover/held/<instance>` once none runs, and lets them go when the key is deleted,
//! but only if the phase that came with the deletion was applied: an instance that could not
//! switch to phase 7 keeps its ci writes held rather than write them to the old primary.

use std::sync::Arc;

use etcd_client::{Client, PutOptions};

use super::FleetSettings;
use crate::cutover::HeldAck;
use crate::shared::hold::UNTIL_ETCD;
use crate::shared::Shared;

/// etcd's hold key, as read or watched.
pub fn parse_epoch(value: &[u8]) -> u64 {
    String::from_utf8_lossy(value).trim().parse().unwrap_or(1)
}

/// Holds ci writes under `epoch` and confirms, once they are drained, in etcd.
pub fn hold(shared: &Arc<Shared>, client: &Client, s: &FleetSettings, lease: i64, epoch: u64) {
    if shared.hold.held() != Some(epoch) {
        shared.hold.hold(epoch);
        tracing::warn!(
            epoch,
            running = shared.hold.running(),
            "cutover: ci write transactions held"
        );
    }
    let (shared, mut client, key) = (shared.clone(), client.clone(), s.held_key());
    let timeout = s.request_timeout;
    tokio::spawn(async move {
        let put = |drained: bool, running: usize| HeldAck {
            epoch,
            drained,
            running,
        };
        let options = || Some(PutOptions::new().with_lease(lease));
        let first = put(false, shared.hold.running());
        if first.running > 0 {
            if let Ok(v) = serde_json::to_string(&first) {
                let _ = tokio::time::timeout(timeout, client.put(key.as_str(), v, options())).await;
            }
        }
        shared.hold.drained().await;
        if shared.hold.held() != Some(epoch) {
            return;
        }
        if let Ok(v) = serde_json::to_string(&put(true, 0)) {
            match tokio::time::timeout(timeout, client.put(key.as_str(), v, options())).await {
                Ok(Ok(_)) => {
                    tracing::info!(epoch, "cutover: hold confirmed, no ci transaction running")
                }
                Ok(Err(e)) => {
                    tracing::error!(epoch, error = %e, "cutover: hold confirmation not stored")
                }
                Err(_) => tracing::error!(epoch, "cutover: hold confirmation timed out"),
            }
        }
    });
}

/// The hold was lifted in etcd: let the held writes go, on the phase applied with it.
pub fn release(shared: &Arc<Shared>, client: &Client, s: &FleetSettings) {
    let status = shared.fleet.status();
    if let Some(error) = status.last_error {
        tracing::error!(error, "cutover: the hold was lifted but the phase that came with it was not applied; ci writes stay held");
        return;
    }
    if let Some(epoch) = shared.hold.held() {
        shared.hold.release();
        if epoch == UNTIL_ETCD {
            tracing::info!("fleet: etcd answered and no cutover holds the fleet; ci writes go on");
            return release_ack(client, s);
        }
        tracing::warn!(
            epoch,
            phase = shared.config.load().phase.number(),
            "cutover: held ci write transactions released"
        );
    }
    release_ack(client, s);
}

/// Removes this instance's confirmation of a hold that is over.
fn release_ack(client: &Client, s: &FleetSettings) {
    let (mut client, key, timeout) = (client.clone(), s.held_key(), s.request_timeout);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, client.delete(key, None)).await;
    });
}
