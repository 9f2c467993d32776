//! The cutover's etcd records, the coordinator's side: start (a lock no second cutover can
//! take), the hold barrier, the point of no return, and the end (switch and release in one
//! transaction, or an abort). Every call is bounded by the fleet's request_timeout.
//!
//! Keys under `<prefix>/cutover/`: `lock` (leased to the coordinator), `hold` (the epoch being
//! held; leased until the point of no return, so a coordinator that dies before promoting
//! releases the fleet on the old phase), `held/<instance>`, `record`, `abort`.

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::record::{HeldAck, Record};
use crate::fleet::etcd::{bounded, Etcd};
use crate::fleet::{FleetError, FleetSettings};

/// What stands in the way of a new cutover.
pub enum Busy {
    /// A live coordinator holds the lock.
    Locked(Option<Record>),
    /// No coordinator, but a hold left behind past the point of no return.
    Stranded(Record),
}

pub struct Store {
    pub etcd: Etcd,
    pub s: FleetSettings,
}

fn json<T: serde::Serialize>(key: &str, v: &T) -> Result<String, FleetError> {
    serde_json::to_string(v).map_err(|error| FleetError::Record {
        key: key.into(),
        error,
    })
}

impl Store {
    fn key(&self, name: &str) -> String {
        self.s.cutover_key(name)
    }

    pub async fn record(&mut self) -> Result<Option<Record>, FleetError> {
        let key = self.key("record");
        let resp = bounded(
            self.etcd.timeout(),
            self.etcd.client.get(key.as_str(), None),
        )
        .await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|error| FleetError::Record { key, error })
    }

    /// Takes the lock when no cutover runs; the epoch is the revision that took it.
    pub async fn begin(
        &mut self,
        lease: i64,
        record: &Record,
    ) -> Result<Result<u64, Busy>, FleetError> {
        let (lock, hold) = (self.key("lock"), self.key("hold"));
        let txn = Txn::new()
            .when([
                Compare::create_revision(lock.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(hold.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(
                    lock.as_str(),
                    record.coordinator.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::delete(self.key("abort"), None),
            ]);
        let resp = bounded(self.etcd.timeout(), self.etcd.client.txn(txn)).await?;
        if resp.succeeded() {
            let epoch = resp.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(Ok(epoch.unsigned_abs()));
        }
        let existing = self.record().await?;
        let locked = bounded(
            self.etcd.timeout(),
            self.etcd.client.get(lock.as_str(), None),
        )
        .await?;
        match existing {
            Some(r) if locked.kvs().is_empty() && r.committed && r.running() => {
                Ok(Err(Busy::Stranded(r)))
            }
            r => Ok(Err(Busy::Locked(r))),
        }
    }

    pub async fn put_record(&mut self, r: &Record) -> Result<(), FleetError> {
        let key = self.key("record");
        let value = json(&key, r)?;
        bounded(self.etcd.timeout(), self.etcd.client.put(key, value, None)).await?;
        Ok(())
    }

    /// Asks every instance to hold ci writes (leased: it goes with this coordinator).
    pub async fn hold(&mut self, epoch: u64, lease: i64) -> Result<(), FleetError> {
        let options = PutOptions::new().with_lease(lease);
        let (key, value) = (self.key("hold"), epoch.to_string());
        bounded(
            self.etcd.timeout(),
            self.etcd.client.put(key, value, Some(options)),
        )
        .await?;
        Ok(())
    }

    /// The instances' confirmations for `epoch`, by instance name.
    pub async fn acks(&mut self, epoch: u64) -> Result<Vec<(String, HeldAck)>, FleetError> {
        let prefix = self.key("held/");
        let options = GetOptions::new().with_prefix();
        let resp = bounded(
            self.etcd.timeout(),
            self.etcd.client.get(prefix.as_str(), Some(options)),
        )
        .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            if let Ok(ack) = serde_json::from_slice::<HeldAck>(kv.value()) {
                if ack.epoch == epoch {
                    out.push((name, ack));
                }
            }
        }
        Ok(out)
    }

    /// The operator's abort request, if one was made.
    pub async fn abort_requested(&mut self) -> Result<Option<String>, FleetError> {
        let resp = bounded(
            self.etcd.timeout(),
            self.etcd.client.get(self.key("abort"), None),
        )
        .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    pub async fn request_abort(&mut self, reason: &str) -> Result<(), FleetError> {
        bounded(
            self.etcd.timeout(),
            self.etcd.client.put(self.key("abort"), reason, None),
        )
        .await?;
        Ok(())
    }

    /// The point of no return: only while this coordinator still holds its lock (its lease
    /// alive, so the fleet is still held), the hold loses its lease (it now outlives the
    /// coordinator) and the record says the promotion was asked for.
    pub async fn commit(&mut self, epoch: u64, r: &Record) -> Result<bool, FleetError> {
        let (lock, hold, rec) = (self.key("lock"), self.key("hold"), self.key("record"));
        let txn = Txn::new()
            .when([
                Compare::create_revision(lock.as_str(), CompareOp::Equal, epoch as i64),
                Compare::value(hold.as_str(), CompareOp::Equal, epoch.to_string()),
            ])
            .and_then([
                TxnOp::put(hold.as_str(), epoch.to_string(), None),
                TxnOp::put(rec.as_str(), json(&rec, r)?, None),
            ]);
        let resp = bounded(self.etcd.timeout(), self.etcd.client.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    /// Ends the cutover: with `phase` the fleet switches to it and is released in the same
    /// revision (every instance applies the phase before it lets the held writes go); without,
    /// the fleet is released on the phase it runs.
    pub async fn finish(&mut self, phase: Option<&str>, r: &Record) -> Result<i64, FleetError> {
        let rec = self.key("record");
        let mut ops = Vec::new();
        if let Some(value) = phase {
            ops.push(TxnOp::put(self.s.phase_key(), value, None));
        }
        ops.push(TxnOp::delete(self.key("hold"), None));
        ops.push(TxnOp::put(rec.as_str(), json(&rec, r)?, None));
        ops.push(TxnOp::delete(self.key("lock"), None));
        ops.push(TxnOp::delete(self.key("abort"), None));
        let resp = bounded(
            self.etcd.timeout(),
            self.etcd.client.txn(Txn::new().and_then(ops)),
        )
        .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}
