//! The cutover, the operator's side: `pgdecomp cutover` (progress on stderr, the JSON report
//! on stdout), `--abort` and `--status`, and the admin console's CUTOVER commands, which run
//! the same coordinator inside the proxy.

use std::sync::Arc;

use super::record::{Record, Report};
use super::store::Store;
use crate::config::Snapshot;
use crate::fleet::etcd::Etcd;
use crate::fleet::FleetError;

fn store_settings(snap: &Snapshot) -> Result<crate::fleet::FleetSettings, FleetError> {
    snap.fleet
        .clone()
        .ok_or_else(|| FleetError::NotConfigured(snap.source.clone()))
}

async fn store(snap: &Snapshot) -> Result<Store, FleetError> {
    let s = store_settings(snap)?;
    let etcd = Etcd::connect(&s).await?;
    Ok(Store { etcd, s })
}

/// The cutover record stored in etcd, if any.
pub async fn status(snap: &Snapshot) -> Result<Option<Record>, FleetError> {
    store(snap).await?.record().await
}

/// Asks the running cutover to abort (it does so before its point of no return only).
pub async fn request_abort(snap: &Snapshot, reason: &str) -> Result<Option<Record>, FleetError> {
    let mut st = store(snap).await?;
    let record = st.record().await?;
    st.request_abort(reason).await?;
    Ok(record)
}

/// `pgdecomp cutover`: runs it with progress on stderr; returns the report.
pub async fn cutover(snap: Arc<Snapshot>, dry_run: bool) -> Report {
    let mut progress = |line: &str| eprintln!("{line}");
    super::run(snap, dry_run, None, &mut progress).await
}
