//! Session step, beside the relay: the proxy-wide values a transaction reads (the config, the
//! classification cache, the pools, the topology view), kept by a busy client. Each read
//! checks for a newer value with one relaxed load of its pointer, where an arc-swap load costs
//! about 60 instructions: five of those per transaction were 3 % of a -S transaction.

use std::sync::Arc;

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;

use crate::classify::ClassifyCache;
use crate::config::Snapshot;
use crate::pool::Pools;
use crate::shared::Shared;
use crate::topology::View;

type Kept<'s, T> = Cache<&'s ArcSwap<T>, Arc<T>>;

/// Lives in the busy period's state: a client that goes quiet lets go of the values it kept,
/// so an old config, cache or pool map is not held by idle clients after a reload.
pub struct Live<'s> {
    pub config: Kept<'s, Snapshot>,
    pub cache: Kept<'s, ClassifyCache>,
    pub pools: Kept<'s, Pools>,
    pub view: Kept<'s, View>,
}

impl<'s> Live<'s> {
    pub fn new(shared: &'s Shared) -> Self {
        Self {
            config: Cache::new(&shared.config),
            cache: Cache::new(&shared.cache),
            pools: Cache::new(&shared.pools),
            view: Cache::new(shared.topology.view_swap()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value stored after the cache was made is what the next read returns.
    #[test]
    fn a_newer_value_is_seen_on_the_next_read() {
        let swap = ArcSwap::from_pointee(1);
        let mut kept: Kept<'_, i32> = Cache::new(&swap);
        assert_eq!(**kept.load(), 1);
        swap.store(Arc::new(2));
        assert_eq!(**kept.load(), 2);
    }
}
