//! Pipeline step 3 (client → framing → classify → **route** → pool → server): one
//! decomposition phase, parsed from a `phases/phase-N.toml` file (raw serde struct, then a
//! validated `Phase`). The config snapshot holds one; sessions take it at transaction start.

use serde::Deserialize;

use super::schemas::SchemaMask;
use super::violation::{Mode, ViolationKind};
use super::{Group, Target};

/// Why a phase file was refused; the old phase stays active on reload.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("phase file: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("phase = {0}: phases are numbered 1 to 7")]
    Number(i64),
    #[error("name must not be empty")]
    EmptyName,
    #[error("{key} = {value:?}: not a target (main, main_replica, ci, ci_replica)")]
    UnknownTarget { key: &'static str, value: String },
    #[error("{key} = \"{target}\": must be one of {allowed}")]
    TargetNotAllowed {
        key: &'static str,
        target: Target,
        allowed: &'static str,
    },
    #[error("{key} = {value}: must be a percentage from 0 to 100")]
    Percent { key: &'static str, value: f64 },
    #[error("{key}: {rule}")]
    Rule {
        key: &'static str,
        rule: &'static str,
    },
    #[error("the shadow phase {name:?} names a shadow itself; only one level is supported")]
    NestedShadow { name: String },
}

/// Where the `ci` target connects. Only a promoted CI cluster (phase 7) accepts writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CiWriteHost {
    /// Phases 4–6: a separate pool, still to the main primary host.
    MainPrimary,
    /// Phase 7: the promoted CI primary.
    CiPrimary,
}

/// How a rollout draws its number: per transaction, or once per client connection so a client
/// sees one side consistently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutMode {
    #[default]
    Random,
    Client,
}

/// A percentage of traffic moved to a new target; the rest stays on `fallback`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rollout {
    pub percent: f64,
    pub mode: RolloutMode,
    pub fallback: Target,
}

impl Rollout {
    /// `roll` in [0, 100): below `percent` takes `target`. Returns the target and whether the
    /// fallback was taken. At 100 % the roll is not looked at, so a bad roll cannot fall back.
    pub fn pick(&self, target: Target, client_roll: f64, txn_roll: f64) -> (Target, bool) {
        if self.percent >= 100.0 {
            return (target, false);
        }
        let roll = match self.mode {
            RolloutMode::Random => txn_roll,
            RolloutMode::Client => client_roll,
        };
        if roll < self.percent {
            (target, false)
        } else {
            (self.fallback, true)
        }
    }

    fn full(target: Target) -> Self {
        Self {
            percent: 100.0,
            mode: RolloutMode::Random,
            fallback: target,
        }
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseRaw {
    phase: i64,
    name: String,
    shadow: Option<String>,
    #[serde(default)]
    locked_writes: bool,
    main: GroupRaw,
    ci: CiGroupRaw,
    #[serde(default)]
    rollout: RolloutsRaw,
    metrics: MetricsRaw,
    violations: ViolationsRaw,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRaw {
    read: String,
    write: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CiGroupRaw {
    read: String,
    write: String,
    write_host: CiWriteHost,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutsRaw {
    ci_read: Option<RolloutRaw>,
    ci_write: Option<RolloutRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutRaw {
    percent: f64,
    #[serde(default)]
    mode: RolloutMode,
    fallback: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsRaw {
    schemas_used_sample_percent: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViolationsRaw {
    cross_join: Mode,
    cross_database_modification: Mode,
    wrong_schema: Mode,
    locked_table_write: Mode,
}

const PRIMARIES: &str = "main, ci";
const MAIN_ONLY: &str = "main";
const MAIN_READS: &str = "main_replica, main";
const CI_SIDE: &str = "ci_replica, ci";
const MAIN_CLUSTER: &str = "main_replica, main (the CI cluster is not serving before phase 3)";

fn target(key: &'static str, value: &str) -> Result<Target, PhaseError> {
    Target::parse(value).ok_or_else(|| PhaseError::UnknownTarget {
        key,
        value: value.to_owned(),
    })
}

fn require(
    key: &'static str,
    target: Target,
    allowed: &'static str,
    ok: &[Target],
) -> Result<(), PhaseError> {
    if ok.contains(&target) {
        Ok(())
    } else {
        Err(PhaseError::TargetNotAllowed {
            key,
            target,
            allowed,
        })
    }
}

fn percent(key: &'static str, value: f64) -> Result<f64, PhaseError> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(PhaseError::Percent { key, value })
    }
}

fn rule(ok: bool, key: &'static str, rule: &'static str) -> Result<(), PhaseError> {
    if ok {
        Ok(())
    } else {
        Err(PhaseError::Rule { key, rule })
    }
}

fn rollout(
    raw: Option<RolloutRaw>,
    target_now: Target,
    key: &'static str,
    fallback_key: &'static str,
) -> Result<Rollout, PhaseError> {
    let Some(raw) = raw else {
        return Ok(Rollout::full(target_now));
    };
    Ok(Rollout {
        percent: percent(key, raw.percent)?,
        mode: raw.mode,
        fallback: target(fallback_key, &raw.fallback)?,
    })
}

impl Phase {
    /// Parses and validates a phase file. Errors name the offending key.
    pub fn from_toml(text: &str) -> Result<Phase, PhaseError> {
        let raw: PhaseRaw = toml::from_str(text)?;
        let number = u8::try_from(raw.phase)
            .ok()
            .filter(|n| (1..=7).contains(n))
            .ok_or(PhaseError::Number(raw.phase))?;
        rule(!raw.name.trim().is_empty(), "name", "must not be empty")?;
        let main = GroupTargets {
            read: target("main.read", &raw.main.read)?,
            write: target("main.write", &raw.main.write)?,
        };
        let ci = GroupTargets {
            read: target("ci.read", &raw.ci.read)?,
            write: target("ci.write", &raw.ci.write)?,
        };
        let phase = Phase {
            number,
            name: raw.name,
            main,
            ci,
            ci_write_host: raw.ci.write_host,
            ci_read_rollout: rollout(
                raw.rollout.ci_read,
                ci.read,
                "rollout.ci_read.percent",
                "rollout.ci_read.fallback",
            )?,
            ci_write_rollout: rollout(
                raw.rollout.ci_write,
                ci.write,
                "rollout.ci_write.percent",
                "rollout.ci_write.fallback",
            )?,
            schemas_used_sample_percent: percent(
                "metrics.schemas_used_sample_percent",
                raw.metrics.schemas_used_sample_percent,
            )?,
            violations: [
                raw.violations.cross_join,
                raw.violations.cross_database_modification,
                raw.violations.wrong_schema,
                raw.violations.locked_table_write,
            ],
            locked_writes: raw.locked_writes,
            shadow_file: raw.shadow.filter(|s| !s.trim().is_empty()),
            shadow: None,
        };
        phase.validate()?;
        Ok(phase)
    }

    /// Rules that keep a file consistent with phases.md's topology table, so a typo cannot send
    /// writes to a standby or reads of live data to a stale copy.
    fn validate(&self) -> Result<(), PhaseError> {
        use Target::*;
        let (main, ci) = (self.main, self.ci);
        require("main.read", main.read, MAIN_READS, &[MainReplica, Main])?;
        require("main.write", main.write, MAIN_ONLY, &[Main])?;
        require("ci.write", ci.write, PRIMARIES, &[Main, Ci])?;
        require(
            "rollout.ci_read.fallback",
            self.ci_read_rollout.fallback,
            MAIN_READS,
            &[MainReplica, Main, ci.read],
        )?;
        require(
            "rollout.ci_write.fallback",
            self.ci_write_rollout.fallback,
            MAIN_ONLY,
            &[Main, ci.write],
        )?;
        let promoted = self.ci_write_host == CiWriteHost::CiPrimary;
        rule(
            promoted == (self.number == 7),
            "ci.write_host",
            "\"ci_primary\" in phase 7 (after promotion) and only there; \"main_primary\" before",
        )?;
        if promoted {
            require("ci.read", ci.read, CI_SIDE, &[CiReplica, Ci])?;
            require(
                "ci.write",
                ci.write,
                "ci (ci tables on main are stale after promotion)",
                &[Ci],
            )?;
            rule(
                self.ci_read_rollout.percent >= 100.0 && self.ci_write_rollout.percent >= 100.0,
                "rollout",
                "phase 7 cannot send part of the ci traffic to main: ci tables on main are stale",
            )?;
        }
        if self.number <= 2 {
            require("ci.read", ci.read, MAIN_CLUSTER, &[MainReplica, Main])?;
        }
        if self.number <= 3 {
            require(
                "ci.write",
                ci.write,
                "main (the ci write pool arrives in phase 4)",
                &[Main],
            )?;
        }
        rule(
            !(self.locked_writes && self.ci_shares_main()),
            "locked_writes",
            "needs every ci statement on ci targets (ci.write = \"ci\", rollouts at 100)",
        )
    }

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

    pub fn ci_read_rollout(&self) -> Rollout {
        self.ci_read_rollout
    }

    pub fn ci_write_rollout(&self) -> Rollout {
        self.ci_write_rollout
    }

    pub fn schemas_used_sample_percent(&self) -> f64 {
        self.schemas_used_sample_percent
    }

    /// Whether to count this statement in the schemas-used metric; `roll` in [0, 100) must not
    /// be the rollout roll, or sampling would follow the rollout split.
    pub fn sample_schemas_used(&self, roll: f64) -> bool {
        self.schemas_used_sample_percent >= 100.0 || roll < self.schemas_used_sample_percent
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

    /// The target for a group's read or write, with the ci rollout applied. Returns whether the
    /// rollout fell back.
    pub fn target_for(
        &self,
        group: Group,
        read: bool,
        client_roll: f64,
        txn_roll: f64,
    ) -> (Target, bool) {
        match (group, read) {
            (Group::Main, true) => (self.main.read, false),
            (Group::Main, false) => (self.main.write, false),
            (Group::Ci, true) => self
                .ci_read_rollout
                .pick(self.ci.read, client_roll, txn_roll),
            (Group::Ci, false) => self
                .ci_write_rollout
                .pick(self.ci.write, client_roll, txn_roll),
        }
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
#[path = "phase_tests.rs"]
pub(crate) mod tests;
