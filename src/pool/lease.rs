//! Pipeline step 4 (… → route → **pool** → server): a server connection checked out to one
//! client. However the client lets go of it (its transaction ended, it left, it was killed
//! mid-transaction), the connection goes through `stash::release`: to the longest waiting client,
//! else into the stash. One dropped into deadpool directly would sit idle there while clients
//! wait in the hand-off queue.

use std::ops::{Deref, DerefMut};

use deadpool::managed::Object;

use super::manager::ServerManager;
use super::stash;
use crate::server::ServerConn;

/// A checked-out connection; dereferences to the connection itself.
pub struct PooledConn(Option<Object<ServerManager>>);

impl PooledConn {
    pub(super) fn new(conn: Object<ServerManager>) -> Self {
        Self(Some(conn))
    }

    /// Closes the connection instead of pooling it: taken out of the pool, which may then open
    /// another (and tells a waiting client so).
    pub fn discard(mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }

    fn conn(&self) -> &Object<ServerManager> {
        self.0
            .as_ref()
            .expect("only Drop and discard take the connection out")
    }
}

impl Deref for PooledConn {
    type Target = ServerConn;

    fn deref(&self) -> &ServerConn {
        self.conn()
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.0
            .as_mut()
            .expect("only Drop and discard take the connection out")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            stash::release(conn);
        }
    }
}
