//! Fleet coordination, unit tests of the pure decisions in `decide.rs`.

use std::path::{Path, PathBuf};

use super::*;

fn set(value: &str, revision: i64) -> EtcdPhase {
    EtcdPhase::Set {
        value: value.into(),
        revision,
    }
}

fn from_etcd(value: &str, revision: i64) -> Applied {
    Applied::Etcd {
        value: value.into(),
        revision,
    }
}

fn apply(value: &str, revision: i64) -> Choice {
    Choice::Apply {
        file: PathBuf::from("/p").join(value),
        value: value.into(),
        revision,
    }
}

#[test]
fn choose_follows_etcd_and_keeps_the_phase_without_it() {
    let cases: Vec<(&str, Applied, EtcdPhase, Choice)> = vec![
        (
            "unreachable at start keeps the file",
            Applied::File,
            EtcdPhase::Unreachable,
            Choice::Keep,
        ),
        (
            "unreachable later keeps etcd's phase",
            from_etcd("phase-4.toml", 9),
            EtcdPhase::Unreachable,
            Choice::Keep,
        ),
        (
            "no phase stored: the file",
            Applied::File,
            EtcdPhase::Absent,
            Choice::Keep,
        ),
        (
            "key deleted: keep, never fall back",
            from_etcd("phase-7.toml", 9),
            EtcdPhase::Absent,
            Choice::Keep,
        ),
        (
            "etcd wins over the file",
            Applied::File,
            set("phase-4.toml", 5),
            apply("phase-4.toml", 5),
        ),
        (
            "a newer revision applies",
            from_etcd("phase-4.toml", 5),
            set("phase-1.toml", 8),
            apply("phase-1.toml", 8),
        ),
        (
            "same name, newer revision reloads",
            from_etcd("phase-4.toml", 5),
            set("phase-4.toml", 6),
            apply("phase-4.toml", 6),
        ),
        (
            "a replayed event is ignored",
            from_etcd("phase-4.toml", 8),
            set("phase-1.toml", 5),
            Choice::Keep,
        ),
        (
            "the same revision is ignored",
            from_etcd("phase-4.toml", 8),
            set("phase-4.toml", 8),
            Choice::Keep,
        ),
    ];
    for (name, applied, etcd, want) in cases {
        assert_eq!(choose(&applied, &etcd, Path::new("/p")), want, "{name}");
    }
}

#[test]
fn choose_rejects_values_that_leave_the_phase_directory() {
    for value in [
        "../etc/passwd.toml",
        "/abs/phase-1.toml",
        "",
        ".hidden.toml",
        "phase-4",
        "a b.toml",
    ] {
        match choose(&Applied::File, &set(value, 3), Path::new("/p")) {
            Choice::Reject { value: v, reason } => {
                assert_eq!(v, value);
                assert!(!reason.is_empty());
            }
            other => panic!("{value:?}: {other:?}"),
        }
    }
}

#[test]
fn phase_value_maps_numbers_to_shipped_files() {
    let ok = [
        ("4", "phase-4.toml"),
        (" 1 ", "phase-1.toml"),
        ("7", "phase-7.toml"),
        ("phase-3-10pct.toml", "phase-3-10pct.toml"),
    ];
    for (arg, want) in ok {
        assert_eq!(phase_value(arg).unwrap(), want, "{arg}");
    }
    for arg in ["0", "8", "300", "", "../phase-1.toml", "phase-1"] {
        assert!(phase_value(arg).is_err(), "{arg:?} must be refused");
    }
}

#[test]
fn check_switch_guards_phase_seven() {
    let cases = [
        (None, 1, false, true),
        (Some(1), 4, false, true),
        (Some(6), 1, false, true),
        (Some(4), 4, false, true),
        (Some(6), 7, false, false),
        (None, 7, false, false),
        (Some(7), 6, false, false),
        (Some(7), 7, false, true),
        (Some(6), 7, true, true),
        (Some(7), 6, true, true),
    ];
    for (current, next, force, ok) in cases {
        assert_eq!(
            check_switch(current, next, force).is_ok(),
            ok,
            "{current:?} -> {next} force={force}"
        );
    }
}

#[test]
fn instance_record_round_trips_and_says_when_caught_up() {
    let r = InstanceRecord {
        instance: "a:6432".into(),
        listen: "127.0.0.1:6432".into(),
        phase: 4,
        phase_file: "phase-4.toml".into(),
        source: "etcd".into(),
        revision: 12,
        pid: 7,
        error: None,
        heartbeat_ms: 1,
        last_violation_ms: 0,
        held: None,
    };
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("error"), "{json}");
    assert_eq!(serde_json::from_str::<InstanceRecord>(&json).unwrap(), r);
    assert!(r.caught_up(12) && r.caught_up(11) && !r.caught_up(13));
    let file = InstanceRecord {
        source: "file".into(),
        revision: 0,
        ..r.clone()
    };
    assert!(!file.caught_up(1));
    let failed = InstanceRecord {
        error: Some("no such file".into()),
        ..r
    };
    assert!(!failed.caught_up(12));
}

#[test]
fn applied_revision_is_zero_for_the_file() {
    assert_eq!(Applied::File.revision(), 0);
    assert_eq!(from_etcd("phase-2.toml", 42).revision(), 42);
}
