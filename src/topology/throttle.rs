//! Between route and pool: may a routed transaction of a throttled client (the migration
//! workers) take a server now, or must it wait because the primary whose WAL it adds to has
//! more segments waiting to be archived than `[throttle]` allows? GitLab paused batched
//! background migrations this way: a backlog of unarchived WAL fills the primary's disk and
//! breaks point-in-time recovery. Pure; `session::throttle` carries the answer out.

use super::select::{read_cluster, write_cluster};
use super::view::{ClusterId, View};
use crate::config::ThrottleSettings;
use crate::route::{CiWriteHost, Target};

/// Who asks: the client's login and its current application_name.
#[derive(Clone, Copy, Debug)]
pub struct Who<'a> {
    pub user: &'a str,
    pub application_name: Option<&'a str>,
}

/// The answer for one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Go,
    /// Wait: `server`, the primary of `cluster`, has `ready` segments waiting, above
    /// `threshold`.
    Hold {
        cluster: ClusterId,
        server: String,
        ready: u64,
        threshold: u64,
    },
}

/// The cluster whose primary produces the WAL a transaction on `target` touches: a write
/// target's own, and for a replica target the primary its servers replay (a standby ci
/// cluster follows main). Reads are held too: the throttle pauses the whole worker, as GitLab
/// paused the whole migration, rather than let it run half its batch.
pub fn wal_cluster(view: &View, target: Target, ci_host: CiWriteHost) -> ClusterId {
    if target.is_replica() {
        view.wal_source(read_cluster(target))
    } else {
        write_cluster(target, ci_host)
    }
}

/// Holds a selected client while its primary's backlog is known and above the threshold.
/// Everyone else, and every case the view cannot tell (no writable primary: placement waits
/// for one; backlog unknown: the check login lacks pg_monitor, which the checker logs), goes.
pub fn decide(
    settings: &ThrottleSettings,
    who: Who<'_>,
    target: Target,
    ci_host: CiWriteHost,
    view: &View,
) -> Decision {
    if !settings.selects(who.user, who.application_name) {
        return Decision::Go;
    }
    let cluster = wal_cluster(view, target, ci_host);
    let Some(primary) = view.cluster(cluster).writer() else {
        return Decision::Go;
    };
    match primary.archive_ready {
        Some(ready) if ready > settings.archive_ready_threshold => Decision::Hold {
            cluster,
            server: primary.addr.clone(),
            ready,
            threshold: settings.archive_ready_threshold,
        },
        _ => Decision::Go,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::topology::view::{ClusterView, Health, Node, Probe, Role};
    use crate::topology::Lsn;

    const WORKER: Who<'static> = Who {
        user: "gitlab",
        application_name: Some("gitlab-migration-worker"),
    };
    const WEB: Who<'static> = Who {
        user: "gitlab",
        application_name: Some("puma"),
    };
    const BEFORE_7: CiWriteHost = CiWriteHost::MainPrimary;
    const PHASE_7: CiWriteHost = CiWriteHost::CiPrimary;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            archive_ready_threshold: 42,
            application_names: vec!["gitlab-migration-*".into()],
            users: vec!["migrator".into()],
            ..ThrottleSettings::default()
        }
    }

    fn node(addr: &str, role: Role, in_recovery: bool, ready: Option<u64>) -> Node {
        let mut n = Node::new(addr, role);
        n.health = Health::Up(Probe {
            in_recovery,
            lsn: Lsn(1000),
            flushed: Lsn(1000),
            lag_bytes: 0,
            lag_seconds: 0.0,
            sent: Instant::now(),
        });
        n.archive_ready = ready;
        n
    }

    /// main: primary `m` with `main_ready`, replica; ci: leader `c` (a standby unless
    /// `ci_promoted`) with `ci_ready`, replica.
    fn view(main_ready: Option<u64>, ci_promoted: bool, ci_ready: Option<u64>) -> View {
        let cluster = |leader: Node, replica: &str| ClusterView {
            nodes: vec![leader, node(replica, Role::Replica, true, None)],
            discovered: false,
        };
        View {
            clusters: [
                cluster(node("m", Role::Leader, false, main_ready), "mr"),
                cluster(node("c", Role::Leader, !ci_promoted, ci_ready), "cr"),
            ],
        }
    }

    fn hold(cluster: ClusterId, server: &str, ready: u64) -> Decision {
        Decision::Hold {
            cluster,
            server: server.into(),
            ready,
            threshold: 42,
        }
    }

    #[test]
    fn only_selected_clients_wait_and_only_above_the_threshold() {
        let s = settings();
        let v = view(Some(43), false, None);
        assert_eq!(
            decide(&s, WORKER, Target::Main, BEFORE_7, &v),
            hold(ClusterId::Main, "m", 43)
        );
        assert_eq!(decide(&s, WEB, Target::Main, BEFORE_7, &v), Decision::Go);
        let by_user = Who {
            user: "migrator",
            application_name: None,
        };
        assert_eq!(
            decide(&s, by_user, Target::Main, BEFORE_7, &v),
            hold(ClusterId::Main, "m", 43)
        );
        // 42 is not above 42 (GitLab paused above it).
        let at = view(Some(42), false, None);
        assert_eq!(
            decide(&s, WORKER, Target::Main, BEFORE_7, &at),
            Decision::Go
        );
    }

    #[test]
    fn unknown_backlog_or_no_primary_lets_the_transaction_go() {
        let s = settings();
        let unknown = view(None, false, None);
        assert_eq!(
            decide(&s, WORKER, Target::Main, BEFORE_7, &unknown),
            Decision::Go
        );
        let mut down = view(Some(100), false, None);
        down.clusters[0].nodes[0].health = Health::Down("refused".into());
        assert_eq!(
            decide(&s, WORKER, Target::Main, BEFORE_7, &down),
            Decision::Go
        );
    }

    #[test]
    fn empty_selectors_never_hold() {
        let off = ThrottleSettings::default();
        let v = view(Some(10_000), true, Some(10_000));
        for t in Target::ALL {
            assert_eq!(decide(&off, WORKER, t, PHASE_7, &v), Decision::Go);
        }
    }

    #[test]
    fn the_backlog_that_counts_is_the_primary_the_transaction_writes_or_replays() {
        let s = settings();
        // Before phase 7 ci writes go to main's primary, and the ci standby replays main.
        let v = view(Some(50), false, None);
        for t in Target::ALL {
            assert_eq!(
                decide(&s, WORKER, t, BEFORE_7, &v),
                hold(ClusterId::Main, "m", 50),
                "{t}"
            );
        }
        // Phase 7: ci has its own primary and backlog; main's does not hold ci traffic.
        let v = view(Some(50), true, Some(7));
        assert_eq!(decide(&s, WORKER, Target::Ci, PHASE_7, &v), Decision::Go);
        assert_eq!(
            decide(&s, WORKER, Target::CiReplica, PHASE_7, &v),
            Decision::Go
        );
        assert_eq!(
            decide(&s, WORKER, Target::MainReplica, PHASE_7, &v),
            hold(ClusterId::Main, "m", 50)
        );
        let v = view(Some(1), true, Some(99));
        assert_eq!(
            decide(&s, WORKER, Target::Ci, PHASE_7, &v),
            hold(ClusterId::Ci, "c", 99)
        );
        assert_eq!(decide(&s, WORKER, Target::Main, PHASE_7, &v), Decision::Go);
    }
}
