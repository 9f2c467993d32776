//! Fleet coordination, its etcd v3 client: a thin wrapper over `etcd-client` where every call
//! is bounded by `request_timeout`, speaking in the fleet's terms (the phase key, instance
//! records). No decisions here; those are in `decide.rs`.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use super::decide::{EtcdPhase, InstanceRecord};
use super::{FleetError, FleetSettings};

/// A connection to the etcd cluster of one fleet.
pub struct Etcd {
    pub client: Client,
    timeout: Duration,
}

/// Runs `call`, failing with `Timeout` after `bound`.
pub async fn bounded<T>(
    bound: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(bound, call).await {
        Ok(r) => r.map_err(FleetError::from),
        Err(_) => Err(FleetError::Timeout(bound)),
    }
}

impl Etcd {
    pub async fn connect(s: &FleetSettings) -> Result<Etcd, FleetError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(s.connect_timeout)
            .with_timeout(s.request_timeout)
            .with_keep_alive(Duration::from_secs(2), s.request_timeout);
        let client = bounded(
            s.connect_timeout,
            Client::connect(&s.endpoints, Some(options)),
        )
        .await?;
        let mut etcd = Etcd {
            client,
            timeout: s.request_timeout,
        };
        // The channel connects lazily: prove the cluster answers before calling it connected.
        bounded(etcd.timeout, etcd.client.status()).await?;
        Ok(etcd)
    }

    /// The stored phase and the store's revision at the time of the read.
    pub async fn read_phase(&mut self, key: &str) -> Result<(EtcdPhase, i64), FleetError> {
        let resp = bounded(self.timeout, self.client.get(key, None)).await?;
        let now = resp.header().map(|h| h.revision()).unwrap_or(0);
        let phase = match resp.kvs().first() {
            None => EtcdPhase::Absent,
            Some(kv) => EtcdPhase::Set {
                value: String::from_utf8_lossy(kv.value()).into_owned(),
                revision: kv.mod_revision(),
            },
        };
        Ok((phase, now))
    }

    /// Stores `value` only if the key is still at `expected` (its mod_revision, 0 when it did
    /// not exist), so two operators cannot overwrite each other. Returns the new revision.
    pub async fn set_phase(
        &mut self,
        key: &str,
        value: &str,
        expected: i64,
    ) -> Result<i64, FleetError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = bounded(self.timeout, self.client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or(0));
        }
        let revision = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            })
            .unwrap_or(0);
        Err(FleetError::Conflict { revision })
    }

    /// Every registered instance, sorted by name.
    pub async fn instances(&mut self, prefix: &str) -> Result<Vec<InstanceRecord>, FleetError> {
        let options = GetOptions::new().with_prefix();
        let resp = bounded(self.timeout, self.client.get(prefix, Some(options))).await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let record =
                serde_json::from_slice(kv.value()).map_err(|error| FleetError::Record {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    error,
                })?;
            out.push(record);
        }
        out.sort_by(|a: &InstanceRecord, b| a.instance.cmp(&b.instance));
        Ok(out)
    }

    pub async fn grant(&mut self, ttl: i64) -> Result<i64, FleetError> {
        Ok(bounded(self.timeout, self.client.lease_grant(ttl, None))
            .await?
            .id())
    }

    /// Writes this instance's record, attached to `lease` (it disappears with the instance).
    pub async fn register(
        &mut self,
        key: &str,
        record: &InstanceRecord,
        lease: i64,
    ) -> Result<(), FleetError> {
        let value = serde_json::to_string(record).map_err(|error| FleetError::Record {
            key: key.into(),
            error,
        })?;
        let options = PutOptions::new().with_lease(lease);
        bounded(self.timeout, self.client.put(key, value, Some(options))).await?;
        Ok(())
    }

    /// Removes the registration at once (on shutdown), instead of after the lease's TTL.
    pub async fn revoke(&mut self, lease: i64) -> Result<(), FleetError> {
        bounded(self.timeout, self.client.lease_revoke(lease)).await?;
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
