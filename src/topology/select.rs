//! Pipeline step between route and pool: which server serves a routed target, from the
//! current view. Pure, so the rotation, fallback and read-your-writes rules are unit-tested
//! without servers.

use super::view::{ClusterId, Node, Role, View};
use super::Lsn;
use crate::route::{CiWriteHost, Target};

/// What a read must see: anything, the given WAL position, or the primary's latest state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Any,
    AtLeast(Lsn),
    Primary,
}

/// Why a server was chosen; the session counts the fallbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A write target's primary.
    Primary,
    /// A replica in rotation.
    Replica,
    /// No replica in rotation: the cluster's leader.
    NoReplica,
    /// Replicas in rotation have not replayed the client's writes yet: the leader.
    ReadYourWrites,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
            Self::NoReplica => "no_replica",
            Self::ReadYourWrites => "read_your_writes",
        }
    }
}

/// The chosen server, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick<'a> {
    Server {
        /// Borrowed from the view: a checkout usually finds its pool without copying it.
        addr: &'a str,
        via: Via,
    },
    /// No server can take writes now (switchover, failover, or down); the message says why.
    NoWriter(String),
}

/// The cluster whose primary takes `target`'s writes.
pub fn write_cluster(target: Target, ci_host: CiWriteHost) -> ClusterId {
    match (target, ci_host) {
        (Target::Ci, CiWriteHost::CiPrimary) | (Target::CiReplica, CiWriteHost::CiPrimary) => {
            ClusterId::Ci
        }
        _ => ClusterId::Main,
    }
}

/// The cluster whose servers serve `target`'s reads.
pub fn read_cluster(target: Target) -> ClusterId {
    match target {
        Target::Ci | Target::CiReplica => ClusterId::Ci,
        Target::Main | Target::MainReplica => ClusterId::Main,
    }
}

/// Picks the server for `target`. `need` applies to replica targets only; `rr` rotates among
/// eligible replicas; `skip` excludes a server that just failed to connect.
pub fn pick<'a>(
    view: &'a View,
    target: Target,
    ci_host: CiWriteHost,
    need: Need,
    rr: usize,
    skip: Option<&str>,
) -> Pick<'a> {
    match target {
        Target::Main | Target::Ci => writer(view, write_cluster(target, ci_host)),
        Target::MainReplica | Target::CiReplica => read(view, target, ci_host, need, rr, skip),
    }
}

fn writer(view: &View, cluster: ClusterId) -> Pick<'_> {
    let c = view.cluster(cluster);
    if let Some(n) = c.writer() {
        return Pick::Server {
            addr: &n.addr,
            via: Via::Primary,
        };
    }
    let why = match c.leader() {
        None => "no leader is known".to_string(),
        Some(n) => match (&n.patroni, &n.health) {
            (Some(p), _) if !(p.is_primary() && p.is_running()) => {
                format!("Patroni reports {} as {} ({})", n.addr, p.role, p.state)
            }
            (_, super::Health::Down(e)) => format!("{} is down: {e}", n.addr),
            (_, super::Health::Up(p)) if p.in_recovery => {
                format!("{} is in recovery (a standby)", n.addr)
            }
            _ => format!("{} is not confirmed as primary yet", n.addr),
        },
    };
    Pick::NoWriter(format!(
        "no writable primary in the {} cluster: {why}",
        cluster.label()
    ))
}

fn read<'a>(
    view: &'a View,
    target: Target,
    ci_host: CiWriteHost,
    need: Need,
    rr: usize,
    skip: Option<&str>,
) -> Pick<'a> {
    let cluster = read_cluster(target);
    let c = view.cluster(cluster);
    let usable = |n: &&Node| n.readable() && skip != Some(n.addr.as_str());
    let fits = |n: &&Node| match need {
        Need::Any => true,
        Need::AtLeast(lsn) => n.has_replayed(lsn),
        Need::Primary => false,
    };
    let replicas = || {
        c.nodes
            .iter()
            .filter(|n| n.role == Role::Replica)
            .filter(usable)
    };
    // Counted, then walked again, rather than collected: this runs on every read.
    let eligible = replicas().filter(fits).count();
    if let Some(n) = replicas().filter(fits).nth(rr % eligible.max(1)) {
        return Pick::Server {
            addr: &n.addr,
            via: Via::Replica,
        };
    }
    let in_rotation = replicas().count();
    let via = if in_rotation > 0 {
        Via::ReadYourWrites
    } else {
        Via::NoReplica
    };
    // A standby leader serves reads as well as a replica when it is healthy and caught up.
    if let Some(l) = c.leader() {
        let standby = l.probe().is_some_and(|p| p.in_recovery);
        if standby && usable(&l) && fits(&l) {
            return Pick::Server { addr: &l.addr, via };
        }
    }
    // Otherwise the server that takes this group's writes has every committed row.
    match writer(view, write_cluster(target, ci_host)) {
        Pick::Server { addr, .. } => Pick::Server { addr, via },
        none => match c
            .leader()
            .or_else(|| view.cluster(ClusterId::Main).leader())
        {
            // No writer (mid-switchover): a leader still serves reads.
            Some(l) if !matches!(l.health, super::Health::Down(_)) => {
                Pick::Server { addr: &l.addr, via }
            }
            _ => none,
        },
    }
}
