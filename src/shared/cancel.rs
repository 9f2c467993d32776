//! Proxy-wide state beside the pipeline: CancelRequest routing. Each client gets its own
//! (pid, secret); a cancel is forwarded only to the server connection that client holds at that
//! moment.

use foldhash::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::protocol::startup::encode_cancel;

pub use crate::server::ServerKey;

/// The server a client is using right now.
pub type CancelSlot = Arc<Mutex<Option<Arc<ServerKey>>>>;

#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<(u32, u32), CancelSlot>>,
}

impl CancelRegistry {
    /// Issues a fresh key for a client; `unregister` must be called when it leaves.
    pub fn register(&self) -> ((u32, u32), CancelSlot) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let key: (u32, u32) = (rand::random::<u32>() & 0x7fff_ffff, rand::random());
            if let std::collections::hash_map::Entry::Vacant(e) = clients.entry(key) {
                let slot = CancelSlot::default();
                e.insert(slot.clone());
                return (key, slot);
            }
        }
    }

    pub fn unregister(&self, key: (u32, u32)) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// Forwards a cancel to the server the client holds; unknown keys are ignored, as
    /// PostgreSQL does.
    pub async fn cancel(&self, pid: u32, secret: u32) {
        let slot = {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients.get(&(pid, secret)).cloned()
        };
        let target = slot.and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let Some(target) = target else {
            tracing::info!(pid, "cancel request for a client without a running query");
            return;
        };
        cancel_server(&target).await;
    }
}

/// Sends PostgreSQL's CancelRequest for one server connection (a client's cancel, or the
/// proxy's own after query_timeout).
pub async fn cancel_server(target: &ServerKey) {
    let mut out = BytesMut::new();
    encode_cancel(target.pid, target.secret, &mut out);
    match tokio::net::TcpStream::connect(&target.addr).await {
        Ok(mut s) => {
            let _ = s.write_all(&out).await;
            tracing::info!(server = %target.addr, server_pid = target.pid, "cancel forwarded");
        }
        Err(e) => tracing::warn!(server = %target.addr, error = %e, "cancel: cannot connect"),
    }
}
