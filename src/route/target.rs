//! Route targets (GitLab's db_config_name) and table groups.

use std::fmt;

/// Where a statement executes: GitLab's `db_config_name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Main primary.
    Main,
    /// Main cluster replicas.
    MainReplica,
    /// The CI write connection (main primary host before phase 7, CI primary in phase 7).
    Ci,
    /// CI standby-cluster replicas.
    CiReplica,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Main,
        Target::MainReplica,
        Target::Ci,
        Target::CiReplica,
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Target::Main => "main",
            Target::MainReplica => "main_replica",
            Target::Ci => "ci",
            Target::CiReplica => "ci_replica",
        }
    }

    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.label() == s)
    }

    /// The group whose tables this target serves.
    pub fn group(&self) -> Group {
        match self {
            Target::Main | Target::MainReplica => Group::Main,
            Target::Ci | Target::CiReplica => Group::Ci,
        }
    }

    pub fn is_replica(&self) -> bool {
        matches!(self, Target::MainReplica | Target::CiReplica)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The two databases being split apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Main,
    Ci,
}

impl Group {
    pub fn label(&self) -> &'static str {
        match self {
            Group::Main => "main",
            Group::Ci => "ci",
        }
    }
}
