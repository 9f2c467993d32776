//! Pipeline step 3 (client → framing → classify → **route** → pool → server): a phase file's
//! raw TOML shape and its validation into a `Phase` (the low/high split of ripgrep's flags).

use serde::Deserialize;

use super::actor::{actor_hash, ActorSource, RolloutName};
use super::{CiWriteHost, GroupTargets, Phase, Rollout, RolloutMode};
use crate::route::violation::Mode;
use crate::route::Target;

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
    #[serde(default)]
    actor: ActorSource,
    #[serde(default)]
    actors: Vec<String>,
    #[serde(default)]
    exclude_actors: Vec<String>,
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
    name: RolloutName,
    target_now: Target,
    key: &'static str,
    fallback_key: &'static str,
) -> Result<Rollout, PhaseError> {
    let Some(raw) = raw else {
        return Ok(Rollout::full(name, target_now));
    };
    let percent = percent(key, raw.percent)?;
    let allow = hashes(name, &raw.actors);
    let exclude = hashes(name, &raw.exclude_actors);
    let (actors_key, exclude_key) = match name {
        RolloutName::CiRead => ("rollout.ci_read.actors", "rollout.ci_read.exclude_actors"),
        RolloutName::CiWrite => ("rollout.ci_write.actors", "rollout.ci_write.exclude_actors"),
    };
    rule(
        percent < 100.0 || exclude.is_empty(),
        exclude_key,
        "needs percent below 100: at 100 the rollout is complete and nothing falls back",
    )?;
    rule(
        !allow.iter().any(|h| exclude.binary_search(h).is_ok()),
        actors_key,
        "an actor is listed in both actors and exclude_actors",
    )?;
    Ok(Rollout {
        name,
        percent,
        mode: raw.mode,
        fallback: target(fallback_key, &raw.fallback)?,
        actor: raw.actor,
        allow,
        exclude,
    })
}

/// The listed actors' hashes, sorted for a binary search per decision.
fn hashes(name: RolloutName, actors: &[String]) -> std::sync::Arc<[u64]> {
    let mut v: Vec<u64> = actors.iter().map(|a| actor_hash(name, a)).collect();
    v.sort_unstable();
    v.dedup();
    v.into()
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
                RolloutName::CiRead,
                ci.read,
                "rollout.ci_read.percent",
                "rollout.ci_read.fallback",
            )?,
            ci_write_rollout: rollout(
                raw.rollout.ci_write,
                RolloutName::CiWrite,
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
}
