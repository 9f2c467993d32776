//! The health-check task beside the pipeline: runs a checker round every interval, publishes
//! the view sessions route by, records per-server metrics, logs role changes, and closes the
//! pools of a primary that stopped being writable (its connections must not take more writes).

use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::checker::{static_view, Checker};
use super::select::write_cluster;
use super::view::{ClusterId, View};
use super::Topology;
use crate::config::Snapshot;
use crate::pool::Pools;
use crate::route::Target;

/// Runs health rounds until `stop` changes. `config` is the live snapshot source, `pools` the
/// live pools, and `record(prev, next)` is called with each round's views before they are
/// published (the proxy records its per-server metrics there).
pub async fn run(
    topology: &Topology,
    config: &ArcSwap<Snapshot>,
    pools: &ArcSwap<Pools>,
    record: impl Fn(&View, &View),
    mut stop: watch::Receiver<bool>,
) {
    let mut checker = Checker::new();
    loop {
        let snap = config.load_full();
        let h = &snap.health;
        let next = if h.checks_enabled() {
            checker.round(&snap).await
        } else {
            static_view(&snap)
        };
        let prev = topology.view();
        record(&prev, &next);
        log_changes(&prev, &next);
        let writers =
            |v: &View| ClusterId::ALL.map(|id| v.cluster(id).writer().map(|n| n.addr.clone()));
        let moved = writers(&prev) != writers(&next);
        // Most rounds only move WAL positions; pools change only when a writer does.
        if topology.publish(next) && moved {
            close_unwritable(topology, config, pools);
        }
        let pause = if h.checks_enabled() {
            h.interval
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = topology.recheck_asked() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Closes write-target pools whose server is no longer its cluster's writer. Connections in
/// use are closed when their clients let go; no new transaction gets one.
fn close_unwritable(topology: &Topology, config: &ArcSwap<Snapshot>, pools: &ArcSwap<Pools>) {
    let view = topology.view();
    let ci_host = config.load().phase.ci_write_host();
    let writer = |t: Target| {
        view.cluster(write_cluster(t, ci_host))
            .writer()
            .map(|n| n.addr.clone())
    };
    let (main, ci) = (writer(Target::Main), writer(Target::Ci));
    pools.load().retain(|key| match key.target {
        Target::Main => main.as_deref() == Some(key.spec.addr.as_str()),
        Target::Ci => ci.as_deref() == Some(key.spec.addr.as_str()),
        Target::MainReplica | Target::CiReplica => true,
    });
}

fn log_changes(prev: &View, next: &View) {
    for id in ClusterId::ALL {
        let (p, n) = (prev.cluster(id), next.cluster(id));
        for node in &n.nodes {
            let before = p.nodes.iter().find(|o| o.addr == node.addr);
            let changed = before.is_none_or(|o| {
                o.state() != node.state()
                    || o.role_label() != node.role_label()
                    || o.writable() != node.writable()
            });
            if changed {
                tracing::info!(
                    cluster = id.label(),
                    server = %node.addr,
                    role = node.role_label(),
                    state = node.state().label(),
                    writable = node.writable(),
                    in_rotation = node.readable(),
                    patroni = ?node.patroni.as_ref().map(|m| format!("{} {} {}", m.name, m.role, m.state)),
                    "server state"
                );
            }
        }
        for gone in p
            .nodes
            .iter()
            .filter(|o| !n.nodes.iter().any(|x| x.addr == o.addr))
        {
            tracing::info!(cluster = id.label(), server = %gone.addr, "server left the topology");
        }
    }
}
