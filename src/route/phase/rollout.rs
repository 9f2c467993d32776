//! Pipeline step 3 (client → framing → session → classify → **route** → pool → server): a
//! phase's percentage rollout of ci reads or writes, and the pure pick between its new target
//! and its fallback. The session passes the rolls in; nothing here draws or hashes per call.

use std::sync::Arc;

use serde::Deserialize;

use super::actor::{actor_point, Actor, ActorRolls, ActorSource, RolloutName};
use crate::route::Target;

/// How a rollout chooses a side: per transaction, once per client connection, or by the
/// client's actor (the same actor gets the same side on every connection and instance).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutMode {
    #[default]
    Random,
    Client,
    Actor,
}

/// The side a rollout put a statement on; `label()` is the metric value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    New,
    Fallback,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Fallback => "fallback",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A decision a partial rollout (below 100 %) made: which one, and the side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RolloutPick {
    pub rollout: RolloutName,
    pub side: Side,
}

/// What a rollout may look at: `client` drawn per connection, `txn` per transaction, both in
/// [0, 100); `actor` hashed once per actor change.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rolls {
    pub client: f64,
    pub txn: f64,
    pub actor: ActorRolls,
}

/// A percentage of traffic moved to a new target; the rest stays on `fallback`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub name: RolloutName,
    pub percent: f64,
    pub mode: RolloutMode,
    pub fallback: Target,
    /// Whose value is the actor when the client set none.
    pub actor: ActorSource,
    /// Sorted hashes (salted with `name`) of `actors`: always the new target, in every mode.
    pub allow: Arc<[u64]>,
    /// Sorted hashes of `exclude_actors`: always the fallback (only below 100 %).
    pub exclude: Arc<[u64]>,
}

impl Rollout {
    /// Below `percent` takes `target`. `None` at 100 %, where nothing is looked at, so a bad
    /// roll cannot fall back; otherwise the side taken.
    pub fn pick(&self, target: Target, rolls: &Rolls) -> (Target, Option<Side>) {
        if self.percent >= 100.0 {
            return (target, None);
        }
        let side = self.side(rolls);
        let to = match side {
            Side::New => target,
            Side::Fallback => self.fallback,
        };
        (to, Some(side))
    }

    /// The side below 100 %: the allow lists first, then the mode's number.
    fn side(&self, rolls: &Rolls) -> Side {
        let listed = !self.allow.is_empty() || !self.exclude.is_empty();
        let hash = rolls.actor.hash(self.name, self.actor);
        if listed && self.exclude.binary_search(&hash).is_ok() {
            return Side::Fallback;
        }
        if listed && self.allow.binary_search(&hash).is_ok() {
            return Side::New;
        }
        let roll = match self.mode {
            RolloutMode::Random => rolls.txn,
            RolloutMode::Client => rolls.client,
            RolloutMode::Actor => actor_point(hash),
        };
        if roll < self.percent {
            Side::New
        } else {
            Side::Fallback
        }
    }

    /// `self` for SHOW CLIENTS: `ci_read=new`, `ci_read=random` (no fixed side), or `None`
    /// at 100 %.
    pub fn describe(&self, actor: &Actor, client_roll: f64) -> Option<String> {
        if self.percent >= 100.0 {
            return None;
        }
        let rolls = Rolls {
            client: client_roll,
            txn: 0.0,
            actor: actor.rolls(),
        };
        let hash = rolls.actor.hash(self.name, self.actor);
        let listed =
            self.allow.binary_search(&hash).is_ok() || self.exclude.binary_search(&hash).is_ok();
        let side = if self.mode == RolloutMode::Random && !listed {
            "random"
        } else {
            self.side(&rolls).label()
        };
        Some(format!("{}={side}", self.name.label()))
    }

    pub(super) fn full(name: RolloutName, target: Target) -> Self {
        Self {
            name,
            percent: 100.0,
            mode: RolloutMode::Random,
            fallback: target,
            actor: ActorSource::User,
            allow: Arc::new([]),
            exclude: Arc::new([]),
        }
    }
}
