//! The immutable picture of both clusters that routing reads: each server's claimed role (from
//! the config or Patroni) and what the last health check saw. The checker publishes a new one
//! per round; sessions only read it.

use std::time::Instant;

use super::lsn::Lsn;

/// Which cluster a server belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterId {
    Main,
    Ci,
}

impl ClusterId {
    pub const ALL: [ClusterId; 2] = [ClusterId::Main, ClusterId::Ci];

    pub fn label(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Ci => "ci",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The role a server is said to have, by the config or by Patroni.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The cluster's leader: the primary, or the standby leader of a standby cluster (the
    /// health check tells which: only a primary is out of recovery).
    Leader,
    Replica,
}

/// What Patroni last said about a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatroniMember {
    pub name: String,
    /// As Patroni spells it: master, primary, leader, standby_leader, replica, sync_standby…
    pub role: String,
    /// running, streaming, stopping, starting, crashed…
    pub state: String,
}

impl PatroniMember {
    /// Patroni calls the same thing master, primary or leader depending on endpoint and version.
    pub fn is_primary(&self) -> bool {
        matches!(self.role.as_str(), "master" | "primary" | "leader")
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "streaming")
    }
}

/// One health check's findings on a server that answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub in_recovery: bool,
    /// Insert position on a primary, replay position on a standby.
    pub lsn: Lsn,
    /// Flush position on a primary (what replicas can have replayed), replay on a standby.
    pub flushed: Lsn,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    /// When the check query was sent: a primary's LSN is at least that of every commit
    /// acknowledged before this instant.
    pub sent: Instant,
}

/// The last health check of a server.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    /// Not checked yet, or checks are off or cannot log in: trust the claimed role.
    Unknown,
    Down(String),
    Up(Probe),
}

/// A server's state for metrics and SHOW TOPOLOGY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Unknown,
    Down,
    Lagging,
    Healthy,
}

impl NodeState {
    pub const ALL: [NodeState; 4] = [Self::Unknown, Self::Down, Self::Lagging, Self::Healthy];

    pub fn label(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Down => "down",
            Self::Lagging => "lagging",
            Self::Healthy => "healthy",
        }
    }
}

/// One server as routing sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub addr: String,
    pub role: Role,
    /// `None` for a statically configured cluster.
    pub patroni: Option<PatroniMember>,
    pub health: Health,
    /// Replay lag past both thresholds (GitLab's rule: up to date if either is within bounds).
    pub lagging: bool,
    /// WAL segments waiting to be archived (`.ready` files), read on primaries only; `None`
    /// when unknown: not a primary, not checked yet, or the check login lacks pg_monitor.
    pub archive_ready: Option<u64>,
}

impl Node {
    pub fn new(addr: impl Into<String>, role: Role) -> Self {
        Self {
            addr: addr.into(),
            role,
            patroni: None,
            health: Health::Unknown,
            lagging: false,
            archive_ready: None,
        }
    }

    /// A server takes writes only while its claimed role is leader, Patroni (when used) says it
    /// runs as the primary, and the server itself is out of recovery. Patroni's word alone is not
    /// enough: a demoted leader still answers as master for about a second while stopping.
    pub fn writable(&self) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        match &self.patroni {
            Some(p) if !(p.is_primary() && p.is_running()) => return false,
            Some(_) => {
                return matches!(&self.health, Health::Up(p) if !p.in_recovery);
            }
            None => {}
        }
        match &self.health {
            Health::Up(p) => !p.in_recovery,
            Health::Unknown => true,
            Health::Down(_) => false,
        }
    }

    /// In the read rotation: answering (or not checked yet) and not lagging.
    pub fn readable(&self) -> bool {
        if self.patroni.as_ref().is_some_and(|p| !p.is_running()) {
            return false;
        }
        match &self.health {
            Health::Up(_) => !self.lagging,
            Health::Unknown => true,
            Health::Down(_) => false,
        }
    }

    /// Whether this server has replayed (or written) `lsn`, by its last check.
    pub fn has_replayed(&self, lsn: super::Lsn) -> bool {
        matches!(&self.health, Health::Up(p) if p.lsn >= lsn)
    }

    pub fn state(&self) -> NodeState {
        match (&self.health, self.lagging) {
            (Health::Unknown, _) => NodeState::Unknown,
            (Health::Down(_), _) => NodeState::Down,
            (Health::Up(_), true) => NodeState::Lagging,
            (Health::Up(_), false) => NodeState::Healthy,
        }
    }

    pub fn probe(&self) -> Option<&Probe> {
        match &self.health {
            Health::Up(p) => Some(p),
            _ => None,
        }
    }

    /// The role label for metrics: what the server is, when the check knows.
    pub fn role_label(&self) -> &'static str {
        match (self.role, self.probe().map(|p| p.in_recovery)) {
            (Role::Leader, Some(false)) => "primary",
            (Role::Leader, Some(true)) => "standby_leader",
            (Role::Leader, None) => "leader",
            (Role::Replica, _) => "replica",
        }
    }
}

/// One cluster's servers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    pub nodes: Vec<Node>,
    /// Set when the members come from Patroni.
    pub discovered: bool,
}

impl ClusterView {
    /// The server that takes writes now, if any.
    pub fn writer(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| n.writable())
    }

    /// The leader (primary or standby leader), writable or not.
    pub fn leader(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| n.role == Role::Leader)
    }

    /// The writer's probe: its WAL position and when it was sampled.
    pub fn writer_probe(&self) -> Option<&Probe> {
        self.writer().and_then(Node::probe)
    }
}

/// Both clusters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub clusters: [ClusterView; 2],
}

impl View {
    pub fn cluster(&self, id: ClusterId) -> &ClusterView {
        &self.clusters[id.index()]
    }

    /// The cluster whose WAL `id`'s servers replay: a standby cluster (no writable primary of
    /// its own) follows main.
    pub fn wal_source(&self, id: ClusterId) -> ClusterId {
        match id {
            ClusterId::Ci if self.cluster(ClusterId::Ci).writer().is_none() => ClusterId::Main,
            other => other,
        }
    }
}
