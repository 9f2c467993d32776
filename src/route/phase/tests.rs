//! Phase file loading: the shipped files against phases.md, and validation errors.

use super::*;

pub(crate) const FILES: [&str; 7] = [
    include_str!("../../../phases/phase-1.toml"),
    include_str!("../../../phases/phase-2.toml"),
    include_str!("../../../phases/phase-3.toml"),
    include_str!("../../../phases/phase-4.toml"),
    include_str!("../../../phases/phase-5.toml"),
    include_str!("../../../phases/phase-6.toml"),
    include_str!("../../../phases/phase-7.toml"),
];

#[test]
fn shipped_files_load_with_their_number() {
    for (i, text) in FILES.iter().enumerate() {
        let p = Phase::from_toml(text).unwrap_or_else(|e| panic!("phase-{}: {e}", i + 1));
        assert_eq!(usize::from(p.number()), i + 1);
        assert_eq!(p.schemas_used_sample_percent(), 100.0);
        assert!(p.sample_schemas_used(|| panic!("no roll is needed to count every statement")));
    }
}

#[test]
fn shipped_files_match_the_topology_table() {
    use CiWriteHost::*;
    use Target::*;
    // (main read, main write, ci read, ci write, ci host, locked, shadow)
    let table = [
        (
            MainReplica,
            Main,
            MainReplica,
            Main,
            MainPrimary,
            false,
            None,
        ),
        (
            MainReplica,
            Main,
            MainReplica,
            Main,
            MainPrimary,
            false,
            None,
        ),
        (MainReplica, Main, CiReplica, Main, MainPrimary, false, None),
        (
            MainReplica,
            Main,
            CiReplica,
            Ci,
            MainPrimary,
            false,
            Some("phase-7.toml"),
        ),
        (
            MainReplica,
            Main,
            CiReplica,
            Ci,
            MainPrimary,
            false,
            Some("phase-7.toml"),
        ),
        (
            MainReplica,
            Main,
            CiReplica,
            Ci,
            MainPrimary,
            false,
            Some("phase-7.toml"),
        ),
        (MainReplica, Main, CiReplica, Ci, CiPrimary, true, None),
    ];
    for (text, want) in FILES.iter().zip(table) {
        let p = Phase::from_toml(text).unwrap();
        let got = (
            p.targets(Group::Main).read,
            p.targets(Group::Main).write,
            p.targets(Group::Ci).read,
            p.targets(Group::Ci).write,
            p.ci_write_host(),
            p.locked_writes(),
            p.shadow_file(),
        );
        assert_eq!(got, want, "phase {}", p.number());
    }
}

#[test]
fn enforce_only_in_phase_7() {
    for text in FILES {
        let p = Phase::from_toml(text).unwrap();
        for kind in ViolationKind::ALL {
            let want = if p.number() == 7 {
                Mode::Enforce
            } else {
                Mode::Observe
            };
            assert_eq!(
                p.violation_mode(kind),
                want,
                "phase {} {kind:?}",
                p.number()
            );
        }
    }
}

#[test]
fn ci_shares_main_until_the_write_pool() {
    let shares: Vec<bool> = FILES
        .iter()
        .map(|t| Phase::from_toml(t).unwrap().ci_shares_main())
        .collect();
    assert_eq!(shares, [true, true, true, false, false, false, false]);
}

/// Phase 4 with its `[rollout.ci_write]` body replaced.
fn phase4_with(rollout: &str) -> String {
    let text = FILES[3];
    let start = text.find("[rollout.ci_write]").unwrap();
    let end = text.find("[metrics]").unwrap();
    format!(
        "{}[rollout.ci_write]\n{rollout}\n\n{}",
        &text[..start],
        &text[end..]
    )
}

/// Each bad file and a fragment of the error it must produce.
#[test]
fn invalid_files_are_refused_with_the_key() {
    let p7 = FILES[6];
    let cases: Vec<(String, &str)> = vec![
        (FILES[0].replace("phase = 1", "phase = 8"), "phase = 8"),
        (FILES[0].replace("phase = 1", "phase = 0"), "phase = 0"),
        (
            FILES[0].replace("[main]", "colour = \"blue\"\n[main]"),
            "colour",
        ),
        (
            FILES[0].replace("[metrics]", "[metrics]\nextra = 1"),
            "extra",
        ),
        (
            FILES[0].replace("read = \"main_replica\"", "read = \"replica\""),
            "main.read",
        ),
        (
            FILES[0].replace("write = \"main\"", "write = \"main_replica\""),
            "main.write",
        ),
        (
            FILES[0].replace("cross_join = \"observe\"", "cross_join = \"maybe\""),
            "maybe",
        ),
        (
            FILES[0].replace("name = \"ci-cluster-deployed\"", "name = \" \""),
            "name",
        ),
        (
            FILES[0].replace(
                "schemas_used_sample_percent = 100.0",
                "schemas_used_sample_percent = 101.0",
            ),
            "metrics",
        ),
        (
            FILES[0].replace(
                "write_host = \"main_primary\"",
                "write_host = \"ci_primary\"",
            ),
            "ci.write_host",
        ),
        (
            p7.replace(
                "write_host = \"ci_primary\"",
                "write_host = \"main_primary\"",
            ),
            "ci.write_host",
        ),
        (p7.replace("write = \"ci\"", "write = \"main\""), "ci.write"),
        (
            p7.replace("read = \"ci_replica\"", "read = \"main_replica\""),
            "ci.read",
        ),
        (
            FILES[1].replace(
                "[ci]\nread = \"main_replica\"",
                "[ci]\nread = \"ci_replica\"",
            ),
            "ci.read",
        ),
        (
            FILES[2].replace("write = \"main\"                 #", "write = \"ci\" #"),
            "ci.write",
        ),
        (
            phase4_with("percent = -1.0\nfallback = \"main\""),
            "rollout.ci_write.percent",
        ),
        (
            phase4_with("percent = 50.0\nfallback = \"ci_replica\""),
            "rollout.ci_write.fallback",
        ),
        (
            phase4_with("percent = 50.0\nmode = \"sticky\"\nfallback = \"main\""),
            "sticky",
        ),
        (
            phase4_with("percent = 50.0\nfallback = \"main\"")
                .replace("phase = 4", "phase = 4\nlocked_writes = true"),
            "locked_writes",
        ),
        (
            format!("{p7}\n[rollout.ci_write]\npercent = 50.0\nfallback = \"main\"\n"),
            "rollout",
        ),
    ];
    for (text, fragment) in cases {
        let err = Phase::from_toml(&text).expect_err(fragment).to_string();
        assert!(
            err.contains(fragment),
            "{err:?} should mention {fragment:?}"
        );
    }
}

fn rolls_at(client: f64, txn: f64) -> Rolls {
    Rolls {
        client,
        txn,
        ..Rolls::default()
    }
}

#[test]
fn rollout_share_matches_percent() {
    for pct in [0.0, 0.01, 1.0, 12.5, 50.0, 99.9, 100.0] {
        let p = Phase::from_toml(&phase4_with(&format!(
            "percent = {pct:?}\nfallback = \"main\""
        )))
        .unwrap();
        let rolls: Vec<f64> = (0..1000).map(|i| f64::from(i) * 0.1).collect();
        let on_ci = rolls
            .iter()
            .filter(|r| p.target_for(Group::Ci, false, &rolls_at(0.0, **r)).0 == Target::Ci)
            .count();
        let expected = (pct * 10.0_f64).ceil() as usize; // rolls are multiples of 0.1
        assert_eq!(on_ci, expected, "percent {pct}");
    }
}

#[test]
fn client_mode_uses_the_client_roll_only() {
    let p = Phase::from_toml(&phase4_with(
        "percent = 30.0\nmode = \"client\"\nfallback = \"main\"",
    ))
    .unwrap();
    for txn_roll in [0.0, 29.0, 31.0, 99.9] {
        let new = RolloutPick {
            rollout: RolloutName::CiWrite,
            side: Side::New,
        };
        let fallback = RolloutPick {
            side: Side::Fallback,
            ..new
        };
        assert_eq!(
            p.target_for(Group::Ci, false, &rolls_at(10.0, txn_roll)),
            (Target::Ci, Some(new))
        );
        assert_eq!(
            p.target_for(Group::Ci, false, &rolls_at(70.0, txn_roll)),
            (Target::Main, Some(fallback))
        );
    }
    assert!(
        p.ci_shares_main(),
        "a partial write rollout lets main see gitlab_ci"
    );
}

#[test]
fn only_a_partial_random_rollout_draws_a_transaction_roll() {
    let with = |rollout: &str| Phase::from_toml(&phase4_with(rollout)).unwrap();
    assert!(with("percent = 30.0\nfallback = \"main\"").draws_txn_roll());
    assert!(!with("percent = 30.0\nmode = \"client\"\nfallback = \"main\"").draws_txn_roll());
    assert!(!with("percent = 100.0\nfallback = \"main\"").draws_txn_roll());
    for file in FILES {
        assert!(!Phase::from_toml(file).unwrap().draws_txn_roll());
    }
    let unshadowed =
        phase4_with("percent = 30.0\nfallback = \"main\"").replace("shadow = \"phase-7.toml\"", "");
    let shadowed = Phase::from_toml(FILES[0])
        .unwrap()
        .with_shadow(Phase::from_toml(&unshadowed).unwrap())
        .unwrap();
    assert!(
        shadowed.draws_txn_roll(),
        "the shadow's rollout reads the roll too"
    );
}

#[test]
fn sampling_percent() {
    let p = Phase::from_toml(&FILES[0].replace("= 100.0\n\n[violations]", "= 1.0\n\n[violations]"))
        .unwrap();
    assert_eq!(p.schemas_used_sample_percent(), 1.0);
    assert!(p.sample_schemas_used(|| 0.5));
    assert!(!p.sample_schemas_used(|| 1.0));
}

#[test]
fn shadow_is_attached_once() {
    let p4 = Phase::from_toml(FILES[3]).unwrap();
    let p7 = Phase::from_toml(FILES[6]).unwrap();
    let with = p4.clone().with_shadow(p7).unwrap();
    assert_eq!(with.shadow().map(Phase::number), Some(7));
    let nested = p4.clone().with_shadow(p4);
    assert!(matches!(nested, Err(PhaseError::NestedShadow { .. })));
}
