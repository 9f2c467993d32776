//! Each violation kind in observe and enforce mode, and shadow decisions.

use super::*;

#[test]
fn cross_join_observed_then_enforced() {
    let c = cls(K::Read, &[("projects", R), ("ci_builds", R)]);
    let d = route(&c, &phase(4), &transparent());
    assert_eq!(
        (d.target, d.group),
        (Target::MainReplica, Group::Main),
        "both groups: main's target"
    );
    assert_eq!(kinds(&d)[0], (ViolationKind::CrossJoin, Mode::Observe));
    assert!(d.rejected().is_none());

    let d = route(&c, &phase(7), &transparent());
    let v = d.rejected().unwrap();
    assert_eq!(v.kind, ViolationKind::CrossJoin);
    assert_eq!(v.schemas, [GitlabSchema::Ci, GitlabSchema::Main]);
    let e = v.pg_error("SELECT * FROM projects JOIN ci_builds ON true");
    assert_eq!(e.sqlstate, "0A000");
    assert_eq!(
        e.message,
        "Unsupported cross-join across 'projects, ci_builds' querying 'gitlab_ci, gitlab_main' \
         discovered when executing query 'SELECT * FROM projects JOIN ci_builds ON true'"
    );
    let long = "x".repeat(5000);
    assert!(v.pg_error(&long).message.len() < MAX_SQL_IN_ERROR + 200);
}

/// The cross-database modification a write to ci_builds reports in `s`'s transaction.
fn cross_db_on_ci_write(p: &Phase, s: &RouteState) -> Violation {
    let d = route(&cls(K::Write, &[("ci_builds", W)]), p, s);
    let found = d
        .violations
        .into_iter()
        .find(|v| v.kind == ViolationKind::CrossDatabaseModification);
    found.expect("a cross-database modification")
}

#[test]
fn cross_database_modification_in_a_transaction() {
    for (n, mode) in [(4, Mode::Observe), (7, Mode::Enforce)] {
        let p = phase(n);
        let mut s = RouteState::new(ConnectionKind::DbConfig(Group::Main), 0.0);
        run(&begin(), &p, &mut s);
        assert!(run(&cls(K::Write, &[("projects", W)]), &p, &mut s)
            .violations
            .is_empty());
        let v = cross_db_on_ci_write(&p, &s);
        assert_eq!(v.mode, mode, "phase {n}");
        assert_eq!(v.schemas, [GitlabSchema::Ci, GitlabSchema::Main]);
        assert_eq!(
            v.message,
            "Cross-database data modification of 'gitlab_ci, gitlab_main' were detected within a transaction \
             modifying the 'projects, ci_builds' tables."
        );
        assert_eq!(v.pg_error("").sqlstate, "25000");
    }
}

#[test]
fn a_later_transaction_names_only_its_own_tables() {
    let p = phase(4);
    let mut s = RouteState::new(ConnectionKind::DbConfig(Group::Main), 0.0);
    // The first transaction writes more tables than the second, whose names reuse its slots.
    run(&begin(), &p, &mut s);
    for t in ["users", "namespaces", "issues"] {
        run(&cls(K::Write, &[(t, W)]), &p, &mut s);
    }
    run(&txn(TxnCommand::Commit), &p, &mut s);
    run(&begin(), &p, &mut s);
    run(&cls(K::Write, &[("projects", W)]), &p, &mut s);
    let v = cross_db_on_ci_write(&p, &s);
    assert_eq!(
        v.message,
        "Cross-database data modification of 'gitlab_ci, gitlab_main' were detected within a transaction \
         modifying the 'projects, ci_builds' tables."
    );
}

#[test]
fn cross_database_modification_rules() {
    let p = phase(4);
    let mut s = transparent();
    // Autocommit writes to both are fine.
    run(&cls(K::Write, &[("projects", W)]), &p, &mut s);
    assert!(route(&cls(K::Write, &[("ci_builds", W)]), &p, &s)
        .violations
        .is_empty());
    // main + shared + internal in one transaction are allowed; reads of ci are fine.
    run(&begin(), &p, &mut s);
    run(
        &cls(K::Write, &[("projects", W), ("ci_builds", R)]),
        &p,
        &mut s,
    );
    run(
        &cls(K::Write, &[("loose_foreign_keys_deleted_records", W)]),
        &p,
        &mut s,
    );
    let d = route(&cls(K::Write, &[("schema_migrations", W)]), &p, &s);
    assert!(!kinds(&d).contains(&(ViolationKind::CrossDatabaseModification, Mode::Observe)));
    // A locking read counts as a modification (GitLab's ' for update' rule); savepoints nest.
    run(&txn(TxnCommand::Savepoint), &p, &mut s);
    assert_eq!(s.tracker.depth(), 2);
    let d = run(&cls(K::LockingRead, &[("ci_builds", R)]), &p, &mut s);
    assert!(kinds(&d).contains(&(ViolationKind::CrossDatabaseModification, Mode::Observe)));
    run(&txn(TxnCommand::Release), &p, &mut s);
    assert_eq!(s.tracker.depth(), 1);
    run(&txn(TxnCommand::Rollback), &p, &mut s);
    assert_eq!((s.tracker.depth(), s.txn), (0, TxnState::Idle));
    // The set is cleared at the end of the transaction.
    run(&begin(), &p, &mut s);
    assert!(route(&cls(K::Write, &[("ci_builds", W)]), &p, &s)
        .violations
        .is_empty());
}

#[test]
fn undefined_tables_count_in_cross_database_modification() {
    let p = phase(4);
    let cross = |d: &Decision| {
        kinds(d).contains(&(ViolationKind::CrossDatabaseModification, Mode::Observe))
    };
    let mut s = transparent();
    // A main table and an undefined one: GitLab's rule sees two schemas.
    run(&begin(), &p, &mut s);
    run(&cls(K::Write, &[("projects", W)]), &p, &mut s);
    assert!(cross(&route(&cls(K::Write, &[("my_table", W)]), &p, &s)));
    run(&txn(TxnCommand::Rollback), &p, &mut s);
    // Two different undefined tables are two schemas; one undefined table with shared is one.
    run(&begin(), &p, &mut s);
    run(&cls(K::Write, &[("my_table", W)]), &p, &mut s);
    assert!(!cross(&route(
        &cls(
            K::Write,
            &[("my_table", W), ("loose_foreign_keys_deleted_records", W)]
        ),
        &p,
        &s
    )));
    assert!(cross(&route(&cls(K::Write, &[("other_table", W)]), &p, &s)));
    run(&txn(TxnCommand::Rollback), &p, &mut s);
    // Reading an undefined table while writing main is no modification.
    run(&begin(), &p, &mut s);
    run(&cls(K::Write, &[("projects", W)]), &p, &mut s);
    assert!(!cross(&route(
        &cls(K::Write, &[("users", W), ("my_table", R)]),
        &p,
        &s
    )));
}

#[test]
fn pinned_statement_of_the_other_group() {
    let pinned_ci = |n| {
        let mut s = transparent();
        run(&begin(), &phase(n), &mut s);
        run(&cls(K::Write, &[("ci_builds", W)]), &phase(n), &mut s);
        s
    };
    // Before phase 7: runs on the pinned connection, counted.
    let d = route(&cls(K::Write, &[("projects", W)]), &phase(6), &pinned_ci(6));
    assert_eq!(d.target, Target::Ci);
    assert!(d.rejected().is_none());
    assert!(kinds(&d).contains(&(ViolationKind::WrongSchema, Mode::Observe)));
    // Phase 7: refused, GitLab's locked-table error first.
    let s = pinned_ci(7);
    let d = route(&cls(K::Write, &[("projects", W)]), &phase(7), &s);
    assert_eq!(
        kinds(&d),
        [
            (ViolationKind::LockedTableWrite, Mode::Enforce),
            (ViolationKind::CrossDatabaseModification, Mode::Enforce),
            (ViolationKind::WrongSchema, Mode::Enforce),
        ]
    );
    assert_eq!(d.rejected().unwrap().pg_error("").sqlstate, "2F002");
    let d = route(&cls(K::Read, &[("projects", R)]), &phase(7), &s);
    assert_eq!(d.rejected().unwrap().pg_error("").sqlstate, "42501");
    // A refused statement did not run: the state is unchanged.
    let mut after = s.clone();
    after.after_statement(&cls(K::Write, &[("projects", W)]), &d);
    assert_eq!(after, s);
}

#[test]
fn locked_table_write_in_phase_7() {
    let p = phase(7);
    let main = RouteState::new(ConnectionKind::DbConfig(Group::Main), 0.0);
    for c in [
        cls(K::Write, &[("ci_builds", W)]),
        cls(K::Ddl, &[("ci_builds", Ddl)]),
    ] {
        let d = route(&c, &p, &main);
        let v = d
            .violations
            .iter()
            .find(|v| v.kind == ViolationKind::LockedTableWrite)
            .unwrap();
        assert_eq!(
            (v.mode, v.table.as_deref()),
            (Mode::Enforce, Some("ci_builds"))
        );
        let e = v.pg_error("TRUNCATE ci_builds");
        assert_eq!(e.sqlstate, "2F002");
        assert_eq!(
            e.message,
            "Table: \"ci_builds\" is write protected within this Gitlab database."
        );
        assert_eq!(
            e.hint,
            Some("Make sure you are using the right database connection")
        );
    }
    // Reads of the stale copy are a wrong schema, not a locked write; shared tables stay writable.
    let d = route(&cls(K::Read, &[("ci_builds", R)]), &p, &main);
    assert_eq!(kinds(&d), [(ViolationKind::WrongSchema, Mode::Enforce)]);
    assert!(route(
        &cls(K::Write, &[("loose_foreign_keys_deleted_records", W)]),
        &p,
        &main
    )
    .violations
    .is_empty());
    // Observe mode: counted, not refused.
    let soft =
        Phase::from_toml(&phase::tests::FILES[6].replace("\"enforce\"", "\"observe\"")).unwrap();
    let d = route(&cls(K::Write, &[("ci_builds", W)]), &soft, &main);
    assert!(d.rejected().is_none());
    assert!(kinds(&d).contains(&(ViolationKind::LockedTableWrite, Mode::Observe)));
    // Not before phase 7.
    assert!(route(&cls(K::Write, &[("ci_builds", W)]), &phase(3), &main)
        .violations
        .is_empty());
}

#[test]
fn shadow_phase_7_counts_what_it_would_refuse() {
    let p = phase(4).with_shadow(phase(7)).unwrap();
    let mut s = transparent();
    run(&begin(), &p, &mut s);
    let d = run(&cls(K::Write, &[("ci_builds", W)]), &p, &mut s);
    assert!(
        route_shadow(&cls(K::Write, &[("ci_builds", W)]), &p, &transparent())
            .unwrap()
            .violations
            .is_empty()
    );
    assert!(d.violations.is_empty());
    let c = cls(K::Read, &[("projects", R)]);
    let real = route(&c, &p, &s);
    let shadow = route_shadow(&c, &p, &s).unwrap();
    assert!(real.rejected().is_none());
    assert_eq!((shadow.target, shadow.reason), (Target::Ci, Reason::Pinned));
    assert_eq!(
        shadow.rejected().map(|v| v.kind),
        Some(ViolationKind::WrongSchema)
    );
    assert!(
        route_shadow(&c, &phase(4), &s).is_none(),
        "no shadow attached"
    );
}

#[test]
fn shadow_remaps_a_rollout_fallback_pin_by_group() {
    let text = phase::tests::FILES[3].replace("percent = 100.0", "percent = 0.0");
    let p = Phase::from_toml(&text)
        .unwrap()
        .with_shadow(phase(7))
        .unwrap();
    let mut s = transparent();
    run(&begin(), &p, &mut s);
    let d = run(&cls(K::Write, &[("ci_builds", W)]), &p, &mut s);
    assert_eq!(
        (d.target, d.reason),
        (Target::Main, Reason::RolloutFallback)
    );
    let shadow = route_shadow(&cls(K::Write, &[("ci_builds", W)]), &p, &s).unwrap();
    assert_eq!(shadow.target, Target::Ci);
    assert!(shadow.violations.is_empty());
}

#[test]
fn ready_for_query_idle_resets_the_transaction() {
    let p = phase(4);
    let mut s = transparent();
    run(&begin(), &p, &mut s);
    run(&cls(K::Write, &[("projects", W)]), &p, &mut s);
    s.on_ready_for_query(b'T');
    assert!(s.pinned().is_some());
    s.on_ready_for_query(b'I');
    assert_eq!((s.txn, s.tracker.depth()), (TxnState::Idle, 0));
    assert!(route(&cls(K::Write, &[("ci_builds", W)]), &p, &s)
        .violations
        .is_empty());
}
