//! Session step (client → framing → **session** → …): a logged-in client, everything the
//! relay, the pump and placement share about it.

use std::net::SocketAddr;

use super::io::ClientIo;
use super::machine::Session;
use super::params::ClientParams;
use crate::config::{Database, Snapshot};
use crate::route::{Actor, ConnectionKind};
use crate::server::ServerSpec;
use crate::shared::cancel::CancelSlot;
use crate::topology::ReadYourWrites;

/// A logged-in client.
pub struct Client {
    pub io: ClientIo,
    pub id: u64,
    pub peer: SocketAddr,
    pub user: String,
    pub database: String,
    pub params: ClientParams,
    /// Server login for this client; the address is filled in per target.
    pub spec: ServerSpec,
    pub cancel_key: (u32, u32),
    pub cancel_slot: CancelSlot,
    /// All protocol and routing state of the session.
    pub session: Session,
    /// The client → server buffer, reused by every attachment.
    pub to_server: bytes::BytesMut,
    /// Positions the client's reads must see (its own writes, or `pgdecomp.min_lsn`).
    pub ryw: ReadYourWrites,
    /// Buffered bytes in either direction beyond which the proxy stops reading the other
    /// side (`pool.client_buffer_bytes`), so a slow reader pushes back on a fast writer
    /// instead of growing memory.
    pub high_water: usize,
    /// Who the client is for `actor` rollouts; `session.route.actor` holds its hashes.
    pub actor: std::sync::Arc<Actor>,
    /// The frames of the request being planned, reused so a request allocates no list.
    pub unit: Vec<crate::protocol::frame::Frame>,
    /// The pools this client used last, found again without the shared map.
    pub pools: crate::pool::PoolCache,
    /// This client's turn in the rotation over replicas.
    pub reads: usize,
    /// Its place in a pool's hand-off queue, made on its first wait for a full pool.
    pub queue_slot: Option<std::sync::Arc<crate::pool::Slot>>,
}

/// What the handshake established about a client.
pub struct Login {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub db: Database,
    pub params: ClientParams,
    pub spec: ServerSpec,
    pub cancel_key: (u32, u32),
    pub cancel_slot: CancelSlot,
    pub snap: std::sync::Arc<Snapshot>,
}

impl Client {
    /// The client went quiet: what only its busy periods use is let go.
    pub fn rest(&mut self) {
        self.session.rest();
        self.unit = Vec::new();
        self.queue_slot = None;
    }

    /// Takes back a planned request's frame list, emptied (a huge pipeline's is let go). Its
    /// messages are gone: the session forgets what it knew by their addresses.
    pub fn keep_unit(&mut self, mut unit: Vec<crate::protocol::frame::Frame>) {
        self.session.batch_done();
        unit.clear();
        if unit.capacity() <= 64 {
            self.unit = unit;
        }
    }

    pub fn new(io: ClientIo, peer: SocketAddr, l: Login) -> Self {
        let connection =
            l.db.db_config
                .map_or(ConnectionKind::Transparent, ConnectionKind::DbConfig);
        let actor = Actor::new(&l.user, l.params.get("application_name"), l.params.actor());
        let mut session = Session::new(connection, l.snap.clone(), rand::random::<f64>() * 100.0);
        session.route.actor = actor.rolls();
        Self {
            io,
            id: l.id,
            peer,
            user: l.user,
            database: l.database,
            params: l.params,
            spec: l.spec,
            cancel_key: l.cancel_key,
            cancel_slot: l.cancel_slot,
            ryw: ReadYourWrites::new(
                l.snap.health.read_your_writes,
                l.snap.health.read_your_writes_timeout,
            ),
            high_water: l.snap.client_buffer,
            session,
            to_server: bytes::BytesMut::new(),
            actor: std::sync::Arc::new(actor),
            unit: Vec::new(),
            pools: crate::pool::PoolCache::default(),
            reads: l.id as usize,
            queue_slot: None,
        }
    }

    /// Changes the actor (`SET`/`RESET pgdecomp.actor`): hashed here, once, and shown by
    /// SHOW CLIENTS.
    pub fn set_actor(&mut self, actor: Option<&str>, shared: &crate::shared::Shared) {
        // Copied only if SHOW CLIENTS' entry still shares the old one.
        std::sync::Arc::make_mut(&mut self.actor).set(actor);
        self.session.route.actor = self.actor.rolls();
        if let Some(entry) = shared.control.client(self.id) {
            entry.set_rollout(&self.actor, self.session.route.client_roll);
        }
    }
}
