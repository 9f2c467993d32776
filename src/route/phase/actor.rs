//! Pipeline step 3 (client → framing → session → classify → **route** → pool → server): who a
//! client is for `mode = "actor"` rollouts, and the fixed hash that puts an actor on a side.
//!
//! The hash is part of the contract: every pgdecomp instance, of any version that keeps it, must
//! put an actor on the same side. It is the first 8 bytes (big-endian) of
//! `SHA-256("<rollout>:<actor>")`, with `<rollout>` `ci_read` or `ci_write` so the two rollouts
//! split independently; its top 53 bits over 2⁵³, times 100, is the actor's point in [0, 100).
//! An actor below `percent` takes the new target. Rust's `DefaultHasher` is seeded per process,
//! so it could not give two instances the same answer.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The two rollouts of a phase; their names salt the actor hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RolloutName {
    CiRead,
    CiWrite,
}

impl RolloutName {
    pub const ALL: [RolloutName; 2] = [Self::CiRead, Self::CiWrite];

    /// The `[rollout.<name>]` key, the hash salt and the metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::CiRead => "ci_read",
            Self::CiWrite => "ci_write",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The actor of a client that did not set `pgdecomp.actor` (`actor = …` in a rollout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorSource {
    /// The login user: always there and fixed for the connection's life.
    #[default]
    User,
    /// The startup packet's application_name, or the user when the client sent none.
    ApplicationName,
}

/// The documented actor hash (see the module comment).
pub fn actor_hash(rollout: RolloutName, actor: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(rollout.label().as_bytes());
    h.update(b":");
    h.update(actor.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// An actor hash's point in [0, 100): its top 53 bits (exact in an f64) over 2⁵³.
pub fn actor_point(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64 * 100.0
}

/// One actor's hash for each rollout, in `RolloutName` order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActorHashes([u64; 2]);

/// Actors whose hashes a thread keeps: most logins come from a few users and applications,
/// and each new client would otherwise pay a SHA-256 per rollout for each of its actors.
const KEEP_ACTORS: usize = 256;

thread_local! {
    static SEEN: RefCell<HashMap<Box<str>, ActorHashes>> = RefCell::new(HashMap::new());
}

impl ActorHashes {
    /// The hashes of `actor`, remembered per thread (the same as computing them: the hash is
    /// fixed). A full memory starts over rather than tracking which actor is oldest.
    pub fn of(actor: &str) -> Self {
        if let Some(h) = SEEN.with_borrow(|seen| seen.get(actor).copied()) {
            return h;
        }
        let h = Self::compute(actor);
        SEEN.with_borrow_mut(|seen| {
            if seen.len() >= KEEP_ACTORS {
                seen.clear();
            }
            seen.insert(actor.into(), h);
        });
        h
    }

    fn compute(actor: &str) -> Self {
        Self(RolloutName::ALL.map(|r| actor_hash(r, actor)))
    }

    pub fn get(self, rollout: RolloutName) -> u64 {
        self.0[rollout.index()]
    }
}

/// The hashes routing looks at, computed when the actor changes: the actor the client set,
/// else the default of the rollout's `actor` source. Copied into the routing state, so a
/// transaction neither hashes nor allocates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActorRolls {
    set: Option<ActorHashes>,
    user: ActorHashes,
    application_name: ActorHashes,
}

impl ActorRolls {
    pub fn hash(&self, rollout: RolloutName, source: ActorSource) -> u64 {
        let hashes = self.set.unwrap_or(match source {
            ActorSource::User => self.user,
            ActorSource::ApplicationName => self.application_name,
        });
        hashes.get(rollout)
    }
}

/// Who a client is for actor rollouts: the actor it set (`SET pgdecomp.actor`, or
/// `options=-c pgdecomp.actor=…` at startup), its user and its application_name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    set: Option<String>,
    user: String,
    application_name: String,
    rolls: ActorRolls,
}

impl Actor {
    /// Hashes the two defaults once per connection; an empty application_name means the user.
    pub fn new(user: &str, application_name: Option<&str>, set: Option<&str>) -> Self {
        let app = application_name.filter(|a| !a.is_empty()).unwrap_or(user);
        let user_hashes = ActorHashes::of(user);
        let mut me = Self {
            set: None,
            user: user.to_string(),
            application_name: app.to_string(),
            rolls: ActorRolls {
                set: None,
                user: user_hashes,
                application_name: if app == user {
                    user_hashes
                } else {
                    ActorHashes::of(app)
                },
            },
        };
        me.set(set);
        me
    }

    /// `SET pgdecomp.actor` (`Some`) or `RESET pgdecomp.actor` (`None`, back to the default).
    /// An empty value is the same as RESET.
    pub fn set(&mut self, actor: Option<&str>) {
        let actor = actor.filter(|a| !a.is_empty());
        if actor == self.set.as_deref() {
            return;
        }
        self.set = actor.map(str::to_string);
        self.rolls.set = actor.map(ActorHashes::of);
    }

    /// The value the client set, if any.
    pub fn explicit(&self) -> Option<&str> {
        self.set.as_deref()
    }

    /// The actor a rollout with `source` sees.
    pub fn name(&self, source: ActorSource) -> &str {
        match (&self.set, source) {
            (Some(a), _) => a,
            (None, ActorSource::User) => &self.user,
            (None, ActorSource::ApplicationName) => &self.application_name,
        }
    }

    pub fn rolls(&self) -> ActorRolls {
        self.rolls
    }
}
