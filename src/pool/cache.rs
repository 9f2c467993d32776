//! Pipeline step 4 (… → route → **pool** → server): one client's handles to the pools it used
//! last, so a transaction finds its pool without the process-wide map (its lock, the hashing of
//! the whole key and the copies of the key's strings).

use std::sync::Arc;

use super::{PoolKey, Pools, ServerPool};
use crate::route::Target;
use crate::server::tls::ServerTls;
use crate::server::ServerSpec;

/// Handles kept per client: one per target and server it alternates between.
const KEEP: usize = 4;

/// A client's pools by target and server address. The client's login (user, database,
/// credential) never changes, so the target, the address and the TLS settings pick the pool.
#[derive(Default)]
pub struct PoolCache {
    /// The map the handles came from: a reload that replaces it makes all of them stale.
    from: Option<Arc<Pools>>,
    handles: Vec<(Target, ServerPool)>,
}

impl PoolCache {
    /// The pool for `target` on the server at `addr`, for the client whose login is `spec`.
    pub fn get(
        &mut self,
        pools: &Arc<Pools>,
        target: Target,
        addr: &str,
        spec: &ServerSpec,
        tls: &ServerTls,
    ) -> &ServerPool {
        if !self.from.as_ref().is_some_and(|f| Arc::ptr_eq(f, pools)) {
            self.handles.clear();
            self.from = Some(pools.clone());
        }
        // A pool closed since (its server left the config) is looked up again.
        self.handles.retain(|(_, p)| !p.is_closed());
        let found = self.handles.iter().position(|(t, p)| {
            let s = &p.manager().spec;
            *t == target && s.addr == addr && s.tls == *tls
        });
        let i = match found {
            Some(i) => i,
            None => {
                let key = PoolKey {
                    target,
                    spec: ServerSpec {
                        addr: addr.to_string(),
                        tls: tls.clone(),
                        ..spec.clone()
                    },
                };
                if self.handles.len() >= KEEP {
                    self.handles.remove(0);
                }
                self.handles.push((target, pools.pool(&key)));
                self.handles.len() - 1
            }
        };
        &self.handles[i].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::testing::{pools, spec};

    fn same(a: &ServerPool, b: &ServerPool) -> bool {
        std::ptr::eq(a.manager(), b.manager())
    }

    #[tokio::test]
    async fn a_handle_is_reused_until_its_target_server_map_or_pool_changes() {
        let (map, spec, tls) = (pools(), spec(), ServerTls::default());
        let mut cache = PoolCache::default();
        let first = cache
            .get(&map, Target::Main, "127.0.0.1:1", &spec, &tls)
            .clone();
        let again = cache
            .get(&map, Target::Main, "127.0.0.1:1", &spec, &tls)
            .clone();
        assert!(same(&first, &again));
        assert_eq!(map.all().len(), 1, "one pool in the shared map");
        let other = cache
            .get(&map, Target::Ci, "127.0.0.1:1", &spec, &tls)
            .clone();
        assert!(!same(&first, &other), "the ci target keeps its own pool");
        let moved = cache
            .get(&map, Target::Main, "127.0.0.1:2", &spec, &tls)
            .clone();
        assert!(!same(&first, &moved));
        assert_eq!(first.manager().spec.addr, "127.0.0.1:1");
        assert_eq!(moved.manager().spec.addr, "127.0.0.1:2");
        map.retain(|k| k.spec.addr != "127.0.0.1:1");
        let fresh = cache
            .get(&map, Target::Main, "127.0.0.1:1", &spec, &tls)
            .clone();
        assert!(
            !same(&first, &fresh),
            "a pool closed by retain is looked up again"
        );
        let reloaded = pools();
        let after = cache
            .get(&reloaded, Target::Main, "127.0.0.1:1", &spec, &tls)
            .clone();
        assert!(
            !same(&fresh, &after),
            "a replaced map makes every handle stale"
        );
        for port in 3..10 {
            cache.get(
                &reloaded,
                Target::Main,
                &format!("127.0.0.1:{port}"),
                &spec,
                &tls,
            );
        }
        assert!(cache.handles.len() <= KEEP);
    }
}
