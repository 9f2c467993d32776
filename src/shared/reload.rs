//! Proxy-wide state beside the pipeline: RELOAD and SIGHUP. Re-reads the config file and swaps
//! the pieces of `Shared` it feeds (snapshot, pools, classification cache, topology).

use std::path::PathBuf;
use std::sync::{Arc, MutexGuard};

use super::Shared;
use crate::pool::Pools;

impl Shared {
    /// Re-reads the config file and swaps the new snapshot in atomically. On any error the old
    /// snapshot stays live. Sessions pick the new one up at their next transaction; open
    /// transactions finish on the snapshot they started with.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        let mut chosen = self.chosen_phase();
        let phase = chosen.clone();
        self.reload_locked(&mut chosen, phase)
    }

    /// `reload` with `phase` (a phase file the fleet chose through etcd) in place of the
    /// config's `phase_file`; `None` goes back to the config's. Once loaded, the choice sticks
    /// for later reloads (SIGHUP, RELOAD), so they do not undo the fleet's phase.
    pub fn reload_with_phase(
        &self,
        phase: Option<PathBuf>,
    ) -> Result<(), crate::config::ConfigError> {
        let mut chosen = self.chosen_phase();
        self.reload_locked(&mut chosen, phase)
    }

    /// The fleet's phase file; holding it serialises reloads.
    fn chosen_phase(&self) -> MutexGuard<'_, Option<PathBuf>> {
        self.fleet
            .phase_file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reload_locked(
        &self,
        chosen: &mut Option<PathBuf>,
        phase: Option<PathBuf>,
    ) -> Result<(), crate::config::ConfigError> {
        let path = self.config.load().source.clone();
        match crate::config::load_with_phase(&path, phase.as_deref()) {
            Ok(new) => {
                let (phase_choice, phase) = (phase, new.phase.number());
                let new_phase_file = new.phase_file.clone();
                let old = self.config.load();
                if new.workers != old.workers {
                    tracing::warn!(
                        running = old.workers,
                        configured = new.workers,
                        "workers changed: takes effect at the next start"
                    );
                }
                if old.pool != new.pool {
                    tracing::info!("pool settings changed: new pools; the old ones drain");
                    self.pools.store(Pools::new(new.pool.clone()));
                }
                self.renew_cache(&new);
                // Servers added or removed take effect now, not at the next health round.
                let view = crate::topology::checker::rebase(&new, &self.topology.view());
                self.export_violation_series(&new.classifier);
                self.config.store(Arc::new(new));
                self.topology.publish(view);
                self.metrics.phase.set(i64::from(phase));
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                // The database may have new partitions or functions too.
                self.catalog_refresh.notify_one();
                tracing::info!(config = %path.display(), phase, phase_file = %new_phase_file.display(), "configuration reloaded");
                *chosen = phase_choice;
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(config = %path.display(), error = %e, "reload failed; the previous configuration stays live");
                Err(e)
            }
        }
    }
}
