//! Proxy-wide state beside the pipeline: the catalog the classifier learns from. Read from the
//! main primary at start and after every reload (retried while it fails); each read that
//! succeeds gives the sessions a new classification cache, so statements are classified again
//! with what it taught (partitions take their root table's schema, functions their volatility).

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::catalog::Catalog;
use crate::classify::{Classifier, ClassifyCache, FunctionInfo, Volatility};
use crate::config::Snapshot;
use crate::server::ServerSpec;
use crate::topology::ClusterId;

/// Bound on one read of the catalog (connect, log in, three queries).
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Wait before trying again after a failed read.
const RETRY: Duration = Duration::from_secs(10);

/// `base` (the config's classifier) with what `catalog` says.
pub fn classifier_with(base: &Classifier, catalog: &Catalog) -> Classifier {
    let dictionary = (*base.dictionary)
        .clone()
        .with_partitions(catalog.partitions.iter().cloned());
    let functions = catalog.functions.iter().filter_map(|f| {
        let volatility = match f.volatility {
            'i' => Volatility::Immutable,
            's' => Volatility::Stable,
            'v' => Volatility::Volatile,
            _ => return None,
        };
        Some(FunctionInfo {
            schema: f.schema.clone(),
            name: f.name.clone(),
            volatility,
        })
    });
    Classifier {
        dictionary: Arc::new(dictionary),
        ..base.clone()
    }
    .learn_functions(functions)
}

impl Shared {
    /// The classifier sessions should use under `snapshot`: its own, taught by the last catalog.
    pub fn classifier_for(&self, snapshot: &Snapshot) -> Classifier {
        match (snapshot.learn_catalog, self.catalog.load_full()) {
            (true, Some(catalog)) => classifier_with(&snapshot.classifier, &catalog),
            _ => snapshot.classifier.clone(),
        }
    }

    /// Keeps `catalog` and swaps in a classification cache that knows it.
    pub fn learn_catalog(&self, catalog: Catalog) {
        self.catalog.store(Some(Arc::new(catalog)));
        let snapshot = self.config.load();
        self.renew_cache(&snapshot);
    }

    /// Swaps in an empty classification cache for `snapshot` (and the catalog known now): a
    /// new dictionary, catalog or limit must not answer from classifications made without it.
    pub(super) fn renew_cache(&self, snapshot: &Snapshot) {
        let generation = self.cache.load().generation() + 1;
        let cache = ClassifyCache::with_generation(
            self.classifier_for(snapshot),
            snapshot.cache_size,
            generation,
        );
        let cache = cache.with_max_statement(snapshot.max_statement_bytes);
        self.cache.store(Arc::new(cache));
    }

    /// Where and as whom to read the catalog: the main cluster's writer as the health checker
    /// last saw it (else the configured primary), with the `[health]` login.
    fn catalog_spec(&self) -> Option<ServerSpec> {
        let snapshot = self.config.load();
        let login = snapshot.health.login.clone()?;
        let view = self.topology.view();
        let cluster = view.cluster(ClusterId::Main);
        let addr = cluster
            .writer()
            .or(cluster.leader())
            .map(|n| n.addr.clone())
            .or_else(|| snapshot.main.primary.clone())?;
        Some(ServerSpec { addr, ..login })
    }
}

/// Background task: reads the catalog at start and whenever a reload asks for it.
pub async fn run(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let retry = refresh(&shared).await;
        let wait = async {
            match retry {
                true => tokio::time::sleep(RETRY).await,
                false => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = shared.catalog_refresh.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// One read; true when it should be tried again.
async fn refresh(shared: &Shared) -> bool {
    if !shared.config.load().learn_catalog {
        return false;
    }
    if shared.config.load().health.login.is_none() {
        tracing::warn!("catalog not read: needs a [health] (or [server]) login");
        return false;
    }
    let Some(spec) = shared.catalog_spec() else {
        tracing::info!("catalog not read yet: no main primary known; retrying in 10 s");
        return true;
    };
    match crate::catalog::fetch(&spec, FETCH_TIMEOUT).await {
        Ok(catalog) => {
            tracing::info!(
                server = %catalog.source,
                partitions = catalog.partitions.len(),
                functions = catalog.functions.len(),
                tables = catalog.tables.len(),
                "catalog read; statements are classified with it"
            );
            shared
                .metrics
                .catalog_reads
                .with_label_values(&["ok"])
                .inc();
            shared.learn_catalog(catalog);
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "catalog read failed; retrying in 10 s (unknown functions go to the primary meanwhile)");
            shared
                .metrics
                .catalog_reads
                .with_label_values(&["error"])
                .inc();
            true
        }
    }
}
