//! Unit tests of the cutover's preflight: each refusal and its reason.

use super::*;

fn instance(name: &str) -> InstanceRecord {
    InstanceRecord {
        instance: name.into(),
        listen: "127.0.0.1:6432".into(),
        phase: 6,
        phase_file: "phase-6.toml".into(),
        source: "etcd".into(),
        revision: 3,
        pid: 1,
        error: None,
        heartbeat_ms: 99_000,
        last_violation_ms: 0,
        held: None,
    }
}

fn good() -> Facts {
    Facts {
        dry_run: false,
        phase: Some(6),
        now_ms: 100_000,
        instances: vec![instance("a"), instance("b")],
        expected: vec![],
        heartbeat_bound_ms: 5_000,
        violation_window_ms: 60_000,
        members: vec![Member {
            cluster: "ci",
            name: "ci-1".into(),
            role: "standby_leader".into(),
            state: "streaming".into(),
        }],
        patroni_down: vec![],
        ci_standby: true,
        lag_bytes: 10,
        max_lag_bytes: 1000,
        ci_write_percent: 100.0,
    }
}

fn refused(f: &Facts) -> String {
    check(f).expect_err("refused")
}

#[test]
fn a_healthy_phase_6_fleet_passes() {
    assert_eq!(check(&good()), Ok(()));
    let rehearsal = Facts {
        dry_run: true,
        phase: Some(5),
        instances: good()
            .instances
            .into_iter()
            .map(|i| InstanceRecord { phase: 5, ..i })
            .collect(),
        ..good()
    };
    assert_eq!(check(&rehearsal), Ok(()));
}

#[test]
fn the_wrong_phase_is_refused() {
    let f = Facts {
        phase: Some(5),
        ..good()
    };
    assert!(refused(&f).contains("phase 5"), "{}", refused(&f));
    let f = Facts {
        phase: Some(4),
        dry_run: true,
        ..good()
    };
    assert!(refused(&f).contains("rehearsal needs phase 5 or 6"));
    let f = Facts {
        phase: None,
        ..good()
    };
    assert!(refused(&f).contains("phase set 6"));
}

#[test]
fn silent_missing_or_lagging_instances_are_refused() {
    let mut f = good();
    f.instances[1].heartbeat_ms = 10_000;
    assert!(refused(&f).contains("instance b does not answer"));
    let f = Facts {
        expected: vec!["c".into()],
        ..good()
    };
    assert!(refused(&f).contains("instance c"));
    let mut f = good();
    f.instances[0].phase = 4;
    assert!(refused(&f).contains("instance a runs phase 4"));
    let f = Facts {
        instances: vec![],
        ..good()
    };
    assert!(refused(&f).contains("no pgdecomp instance"));
}

#[test]
fn a_recent_violation_is_refused_an_old_one_is_not() {
    let mut f = good();
    f.instances[0].last_violation_ms = 90_000;
    assert!(refused(&f).contains("violation"));
    f.instances[0].last_violation_ms = 20_000;
    assert_eq!(check(&f), Ok(()));
}

#[test]
fn unhealthy_members_lag_and_a_promoted_ci_are_refused() {
    let mut f = good();
    f.members[0].state = "stopped".into();
    assert!(refused(&f).contains("Patroni reports member ci-1"));
    let f = Facts {
        lag_bytes: 5000,
        ..good()
    };
    assert!(refused(&f).contains("lag is 5000 bytes"));
    let f = Facts {
        ci_standby: false,
        ..good()
    };
    assert!(refused(&f).contains("not a standby"));
}

#[test]
fn a_partial_ci_write_rollout_is_refused() {
    let f = Facts {
        ci_write_percent: 50.0,
        ..good()
    };
    assert!(refused(&f).contains("50 % of ci writes"));
}

#[test]
fn a_configured_patroni_member_that_is_down_is_refused() {
    let f = Facts {
        patroni_down: vec!["127.0.0.1:8009 (cluster ci): connection refused".into()],
        ..good()
    };
    assert!(refused(&f).contains("Patroni member not running: 127.0.0.1:8009"));
}
