//! Actor rollouts: the fixed hash, the 30 % split, stability, allow lists, and the ci_read and
//! ci_write salts splitting independently.

use super::tests::FILES;
use super::*;

/// Phase 4 with both rollouts partial: ci_read and ci_write `[rollout]` tables from the args.
fn phase4(read: &str, write: &str) -> Phase {
    let text = FILES[3];
    let start = text.find("[rollout.ci_write]").unwrap();
    let end = text.find("[metrics]").unwrap();
    let text = format!(
        "{}[rollout.ci_read]\n{read}\n\n[rollout.ci_write]\n{write}\n\n{}",
        &text[..start],
        &text[end..]
    );
    Phase::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const ACTOR_30: &str = "percent = 30.0\nmode = \"actor\"\nfallback = \"main_replica\"";
const WRITE_30: &str = "percent = 30.0\nmode = \"actor\"\nfallback = \"main\"";

fn rolls_of(actor: &Actor) -> Rolls {
    Rolls {
        client: 99.0,
        txn: 99.0,
        actor: actor.rolls(),
    }
}

fn side(p: &Phase, read: bool, actor: &Actor) -> Side {
    let (_, pick) = p.target_for(Group::Ci, read, &rolls_of(actor));
    pick.expect("a partial rollout decides").side
}

fn project(n: u32) -> Actor {
    Actor::new("gitlab", Some("puma"), Some(&format!("project:{n}")))
}

#[test]
fn the_hash_is_the_documented_one() {
    // sha256("ci_read:project:42"), first 8 bytes, computed independently (`sha256sum`).
    let h = actor_hash(RolloutName::CiRead, "project:42");
    let expected = {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(b"ci_read:project:42");
        u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    };
    assert_eq!(h, expected);
    assert!((0.0..100.0).contains(&actor_point(u64::MAX)));
    assert_eq!(actor_point(0), 0.0);
}

#[test]
fn thirty_percent_of_a_thousand_actors() {
    let p = phase4(ACTOR_30, WRITE_30);
    let new = (1..=1000)
        .filter(|n| side(&p, true, &project(*n)) == Side::New)
        .count();
    assert!((260..=340).contains(&new), "{new} of 1000 on the new side");
}

#[test]
fn an_actor_keeps_its_side_whatever_the_connection() {
    let p = phase4(ACTOR_30, WRITE_30);
    for n in 1..=200 {
        let first = side(&p, true, &project(n));
        // Another connection: other user, other application_name, other random numbers.
        let mut again = Actor::new("other", None, None);
        again.set(Some(&format!("project:{n}")));
        let rolls = Rolls {
            client: 0.0,
            txn: 0.0,
            actor: again.rolls(),
        };
        let (_, pick) = p.target_for(Group::Ci, true, &rolls);
        assert_eq!(pick.map(|p| p.side), Some(first), "project:{n}");
    }
}

#[test]
fn ci_read_and_ci_write_split_independently() {
    let p = phase4(ACTOR_30, WRITE_30);
    let (mut both, mut read_only, mut write_only) = (0, 0, 0);
    for n in 1..=1000 {
        let a = project(n);
        match (side(&p, true, &a), side(&p, false, &a)) {
            (Side::New, Side::New) => both += 1,
            (Side::New, Side::Fallback) => read_only += 1,
            (Side::Fallback, Side::New) => write_only += 1,
            _ => {}
        }
    }
    // Independent: about 9 % on both sides' new target; the same salt would give 30 %.
    assert!((50..=130).contains(&both), "{both} new on both");
    assert!(
        read_only > 100 && write_only > 100,
        "{read_only} {write_only}"
    );
}

#[test]
fn allow_and_exclude_lists_win_over_the_percentage() {
    let read = format!(
        "{ACTOR_30}\nactors = [\"project:1\", \"project:2\"]\nexclude_actors = [\"project:3\"]"
    );
    let p = phase4(&read, WRITE_30);
    let zero = phase4(
        "percent = 0.0\nmode = \"actor\"\nfallback = \"main_replica\"\nactors = [\"project:1\"]",
        WRITE_30,
    );
    assert_eq!(side(&zero, true, &project(1)), Side::New);
    assert_eq!(side(&zero, true, &project(2)), Side::Fallback);
    let ninety_nine = phase4(
        "percent = 99.99\nmode = \"actor\"\nfallback = \"main_replica\"\nexclude_actors = [\"project:3\"]",
        WRITE_30,
    );
    assert_eq!(side(&ninety_nine, true, &project(3)), Side::Fallback);
    assert_eq!(side(&p, true, &project(1)), Side::New);
    assert_eq!(side(&p, true, &project(3)), Side::Fallback);
    // Lists apply in the other modes too.
    let random = read.replace("\"actor\"", "\"random\"");
    let p = phase4(&random, WRITE_30);
    assert_eq!(side(&p, true, &project(2)), Side::New);
    // The lists name actors of ci_read only: ci_write hashes with its own salt.
    assert!(p.ci_write_rollout().allow.is_empty());
}

#[test]
fn default_actor_is_the_user_or_the_application_name() {
    let by_app = "percent = 30.0\nmode = \"actor\"\nactor = \"application_name\"\nfallback = \"main_replica\"";
    let p = phase4(&format!("{ACTOR_30}\nactors = [\"alice\"]"), WRITE_30);
    let q = phase4(&format!("{by_app}\nactors = [\"sidekiq\"]"), WRITE_30);
    let mut alice = Actor::new("alice", Some("sidekiq"), None);
    assert_eq!(side(&p, true, &alice), Side::New);
    assert_eq!(side(&q, true, &alice), Side::New);
    assert_eq!(alice.name(ActorSource::ApplicationName), "sidekiq");
    // A set actor wins; RESET goes back to the default.
    alice.set(Some("project:9"));
    assert_eq!(alice.name(ActorSource::User), "project:9");
    let hash = |a: &Actor| {
        a.rolls()
            .hash(RolloutName::CiRead, ActorSource::ApplicationName)
    };
    assert_eq!(
        hash(&alice),
        hash(&Actor::new("x", None, Some("project:9")))
    );
    alice.set(None);
    assert_eq!(
        alice.rolls(),
        Actor::new("alice", Some("sidekiq"), None).rolls()
    );
    // No application_name: the user stands in.
    let bob = Actor::new("bob", Some(""), None);
    assert_eq!(bob.name(ActorSource::ApplicationName), "bob");
}

#[test]
fn list_mistakes_are_refused() {
    let text = FILES[2].replacen(
        "percent = 100.0",
        "percent = 100.0\nexclude_actors = [\"project:1\"]",
        1,
    );
    let err = Phase::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("rollout.ci_read.exclude_actors"), "{err}");
    let text = FILES[2].replacen(
        "percent = 100.0",
        "percent = 5.0\nactors = [\"a\"]\nexclude_actors = [\"a\"]",
        1,
    );
    let err = Phase::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("rollout.ci_read.actors"), "{err}");
}

#[test]
fn show_clients_describes_the_sides() {
    let p = phase4(
        &format!("{ACTOR_30}\nactors = [\"project:1\"]"),
        "percent = 30.0\nmode = \"random\"\nfallback = \"main\"",
    );
    assert_eq!(
        p.describe_rollouts(&project(1), 0.0),
        "ci_read=new ci_write=random"
    );
    let full = Phase::from_toml(FILES[3]).unwrap();
    assert_eq!(full.describe_rollouts(&project(1), 0.0), "");
}

#[test]
fn remembered_hashes_are_the_computed_ones_past_the_memory_bound() {
    // Twice the bound: the memory starts over once, and every answer stays the documented hash.
    for round in 0..2 {
        for i in 0..600 {
            let actor = format!("actor-{i}");
            let h = super::actor::ActorHashes::of(&actor);
            for r in RolloutName::ALL {
                assert_eq!(h.get(r), actor_hash(r, &actor), "{actor} in round {round}");
            }
        }
    }
}
