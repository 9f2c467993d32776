//! Pipeline step 3 (client → framing → classify → **route** → pool → server): one
//! decomposition phase, parsed from a `phases/phase-N.toml` file (raw serde struct, then a
//! validated `Phase`). The config snapshot holds one; sessions take it at transaction start.

use serde::Deserialize;

mod actor;
mod load;
mod rollout;

pub use actor::{actor_hash, actor_point, Actor, ActorRolls, ActorSource, RolloutName};
pub use load::PhaseError;
pub use rollout::{Rollout, RolloutMode, RolloutPick, Rolls, Side};

use super::schemas::SchemaMask;
use super::violation::{Mode, ViolationKind};
use super::{Group, Target};

/// Where the `ci` target connects. Only a promoted CI cluster (phase 7) accepts writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CiWriteHost {
    /// Phases 4–6: a separate pool, still to the main primary host.
    MainPrimary,
    /// Phase 7: the promoted CI primary.
    CiPrimary,
}

/// The read and write target of one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupTargets {
    pub read: Target,
    pub write: Target,
}

/// A validated phase: immutable, shared through the config snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    number: u8,
    name: String,
    main: GroupTargets,
    ci: GroupTargets,
    ci_write_host: CiWriteHost,
    ci_read_rollout: Rollout,
    ci_write_rollout: Rollout,
    schemas_used_sample_percent: f64,
    violations: [Mode; 4],
    locked_writes: bool,
    shadow_file: Option<String>,
    shadow: Option<Box<Phase>>,
}

impl Phase {
    /// Attaches the resolved `shadow_file`. The caller reads that file (relative to this one)
    /// and parses it with `from_toml`; a shadow may not have a shadow.
    pub fn with_shadow(mut self, shadow: Phase) -> Result<Phase, PhaseError> {
        if shadow.shadow_file.is_some() {
            return Err(PhaseError::NestedShadow { name: shadow.name });
        }
        self.shadow = Some(Box::new(shadow));
        Ok(self)
    }

    pub fn number(&self) -> u8 {
        self.number
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file named by `shadow = "…"`, still to be loaded by the caller.
    pub fn shadow_file(&self) -> Option<&str> {
        self.shadow_file.as_deref()
    }

    /// The shadow phase whose decisions are counted but not applied, once attached.
    pub fn shadow(&self) -> Option<&Phase> {
        self.shadow.as_deref()
    }

    pub fn targets(&self, group: Group) -> GroupTargets {
        match group {
            Group::Main => self.main,
            Group::Ci => self.ci,
        }
    }

    pub fn ci_write_host(&self) -> CiWriteHost {
        self.ci_write_host
    }

    pub fn ci_read_rollout(&self) -> &Rollout {
        &self.ci_read_rollout
    }

    pub fn ci_write_rollout(&self) -> &Rollout {
        &self.ci_write_rollout
    }

    /// Whether a partial rollout (this phase's or its shadow's) picks its side per
    /// transaction: only then does a session draw a transaction roll, which otherwise nothing
    /// reads.
    pub fn draws_txn_roll(&self) -> bool {
        [&self.ci_read_rollout, &self.ci_write_rollout]
            .iter()
            .any(|r| r.percent < 100.0 && r.mode == RolloutMode::Random)
            || self.shadow().is_some_and(Phase::draws_txn_roll)
    }

    /// The partial rollouts' sides for one client, for SHOW CLIENTS (`ci_read=new ci_write=…`).
    pub fn describe_rollouts(&self, actor: &Actor, client_roll: f64) -> String {
        [&self.ci_read_rollout, &self.ci_write_rollout]
            .iter()
            .filter_map(|r| r.describe(actor, client_roll))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn schemas_used_sample_percent(&self) -> f64 {
        self.schemas_used_sample_percent
    }

    /// Whether to count this statement in the schemas-used metric; `roll` gives a number in
    /// [0, 100) that must not be the rollout roll, or sampling would follow the rollout split.
    /// It is called only when sampling (the default counts every statement, with no roll).
    pub fn sample_schemas_used(&self, roll: impl FnOnce() -> f64) -> bool {
        self.schemas_used_sample_percent >= 100.0 || roll() < self.schemas_used_sample_percent
    }

    pub fn violation_mode(&self, kind: ViolationKind) -> Mode {
        let [cross_join, cross_database_modification, wrong_schema, locked_table_write] =
            self.violations;
        match kind {
            ViolationKind::CrossJoin => cross_join,
            ViolationKind::CrossDatabaseModification => cross_database_modification,
            ViolationKind::WrongSchema => wrong_schema,
            ViolationKind::LockedTableWrite => locked_table_write,
        }
    }

    /// Phase 7's write locks (GitLab's `lock_writes` triggers, enforced in the proxy).
    pub fn locked_writes(&self) -> bool {
        self.locked_writes
    }

    /// The target for a group's read or write, with the ci rollout applied, and the side a
    /// partial rollout picked (`None` for main and for rollouts at 100 %).
    pub fn target_for(
        &self,
        group: Group,
        read: bool,
        rolls: &Rolls,
    ) -> (Target, Option<RolloutPick>) {
        let (rollout, target) = match (group, read) {
            (Group::Main, true) => return (self.main.read, None),
            (Group::Main, false) => return (self.main.write, None),
            (Group::Ci, true) => (&self.ci_read_rollout, self.ci.read),
            (Group::Ci, false) => (&self.ci_write_rollout, self.ci.write),
        };
        let (target, side) = rollout.pick(target, rolls);
        let pick = side.map(|side| RolloutPick {
            rollout: rollout.name,
            side,
        });
        (target, pick)
    }

    /// Ci traffic can land on the main cluster by design (not split yet, or a partial rollout).
    /// Then main allows gitlab_ci, as GitLab's `database_tasks: false` did; ci never allows main.
    pub fn ci_shares_main(&self) -> bool {
        let on_main = |t: Target| t.group() == Group::Main;
        on_main(self.ci.read)
            || on_main(self.ci.write)
            || (self.ci_read_rollout.percent < 100.0 && on_main(self.ci_read_rollout.fallback))
            || (self.ci_write_rollout.percent < 100.0 && on_main(self.ci_write_rollout.fallback))
    }

    /// Schemas a connection of `group` may touch in this phase (GitLab's
    /// `gitlab_schemas_for_connection`). Undefined tables are allowed nowhere, as in GitLab.
    pub fn allowed_schemas(&self, group: Group) -> SchemaMask {
        let common = SchemaMask::SHARED | SchemaMask::INTERNAL;
        match group {
            Group::Main if self.ci_shares_main() => {
                common | SchemaMask::MAIN | SchemaMask::NAMED | SchemaMask::CI
            }
            Group::Main => common | SchemaMask::MAIN | SchemaMask::NAMED,
            Group::Ci => common | SchemaMask::CI,
        }
    }

    /// `allowed_schemas` as GitLab prints them in the wrong-schema message (sorted).
    pub fn allowed_names(&self, group: Group) -> &'static [&'static str] {
        match group {
            Group::Main if self.ci_shares_main() => &[
                "gitlab_ci",
                "gitlab_internal",
                "gitlab_main",
                "gitlab_shared",
            ],
            Group::Main => &["gitlab_internal", "gitlab_main", "gitlab_shared"],
            Group::Ci => &["gitlab_ci", "gitlab_internal", "gitlab_shared"],
        }
    }
}

#[cfg(test)]
mod actor_tests;
#[cfg(test)]
pub(crate) mod tests;
