//! Pipeline step 3 (client → framing → classify → **route** → pool → server): `route`, the
//! pure phase-routing policy that turns a classification, the phase and the session's
//! `RouteState` into a `Decision`, with the rule checks (cross-join, cross-database
//! modification, wrong schema, locked-table write).

use crate::classify::{Classification, GitlabSchema, StatementKind, TableRole, TxnCommand};

use super::decision::{Decision, Reason};
use super::phase::{Phase, RolloutPick, Side};
use super::schemas::{table_group, SchemaMask};
use super::state::{ConnectionKind, Pinned, RouteState, TxnState};
use super::violation::{self, Violation, ViolationKind};
use super::{Group, Target};

/// Routes one query string (possibly several statements) under `phase`. Pure: the session
/// passes the random numbers in `state`, records metrics from the result and then calls
/// `state.after_statement`.
///
/// ```
/// use pgdecomp::classify::{Classification, CrossJoin, GitlabSchema, StatementKind, TableRef, TableRole};
/// use pgdecomp::route::{route, ConnectionKind, Phase, Reason, RouteState, Target};
///
/// let phase = Phase::from_toml(include_str!("../../phases/phase-3.toml")).unwrap();
/// let mut state = RouteState::new(ConnectionKind::Transparent, 12.5);
/// state.txn_roll = 70.0; // fresh per transaction, drawn by the session
/// let select_ci_builds = Classification {
///     kind: StatementKind::Read,
///     statements: vec![StatementKind::Read],
///     tables: vec![TableRef { name: "ci_builds".into(), role: TableRole::Read, schema: GitlabSchema::Ci }],
///     schemas: vec![GitlabSchema::Ci],
///     cross_join: CrossJoin { allowed: true, schemas: vec![GitlabSchema::Ci] },
///     error: None,
/// };
/// let d = route(&select_ci_builds, &phase, &state);
/// assert_eq!((d.target, d.reason), (Target::CiReplica, Reason::Read));
/// assert!(d.rejected().is_none());
/// state.after_statement(&select_ci_builds, &d);
/// ```
pub fn route(c: &Classification, phase: &Phase, state: &RouteState) -> Decision {
    route_pinned(c, phase, state, state.pinned())
}

/// `route` for a statement that runs on a server connection already attached (the rest of an
/// extended batch, which PostgreSQL runs as one implicit transaction, or session pooling): an
/// open transaction's pin wins, then `on`. Violations are judged where it really runs.
pub fn route_on(c: &Classification, phase: &Phase, state: &RouteState, on: Pinned) -> Decision {
    route_pinned(c, phase, state, Some(state.pinned().unwrap_or(on)))
}

/// `route` with the transaction's pin given separately, so the shadow can re-map it without
/// cloning the state.
fn route_pinned(
    c: &Classification,
    phase: &Phase,
    state: &RouteState,
    pinned: Option<Pinned>,
) -> Decision {
    let tables = SchemaMask::of_statement(c);
    let (group, group_reason) = match (state.connection, tables.group()) {
        (ConnectionKind::DbConfig(g), _) => (g, Reason::DbConfig),
        (ConnectionKind::Transparent, Some(g)) => (g, Reason::Write),
        (ConnectionKind::Transparent, None) => (state.current_group, Reason::SessionGroup),
    };
    let (target, reason, rollout) = choose_target(c, phase, state, pinned, group, group_reason);
    // Most specific first: `rejected()` sends the first enforced one, so a phase-7 write to a
    // locked table gets GitLab's own 2F002 error, and wrong schema is the catch-all.
    let mut violations = Vec::new();
    if let Some(v) = locked_write(c, phase, target) {
        violations.push(v);
    }
    if !c.cross_join.allowed {
        violations.push(cross_join(c, phase));
    }
    if let Some(found) = state.tracker.check(c) {
        violations.push(Violation {
            kind: ViolationKind::CrossDatabaseModification,
            mode: phase.violation_mode(ViolationKind::CrossDatabaseModification),
            schemas: found.schemas,
            table: None,
            message: found.message,
        });
    }
    if let Some(v) = wrong_schema(c, phase, state.connection, target) {
        violations.push(v);
    }
    Decision {
        target,
        group,
        reason,
        rollout,
        violations,
    }
}

/// The decision `phase.shadow()` would have made, to be counted (`pgdecomp_shadow_*`) and never
/// applied. A pinned transaction is re-mapped to the shadow phase's write target of the same
/// group, so the shadow sees the connection it would itself have pinned.
pub fn route_shadow(c: &Classification, phase: &Phase, state: &RouteState) -> Option<Decision> {
    let shadow = phase.shadow()?;
    let pinned = state.pinned().map(|p| Pinned {
        target: shadow.target_for(p.group, false, &state.rolls()).0,
        group: p.group,
    });
    Some(route_pinned(c, shadow, state, pinned))
}

fn choose_target(
    c: &Classification,
    phase: &Phase,
    state: &RouteState,
    pinned: Option<Pinned>,
    group: Group,
    group_reason: Reason,
) -> (Target, Reason, Option<RolloutPick>) {
    if c.kind == StatementKind::Unknown {
        // A transaction cannot move mid-way; a db_config connection names its database, so its
        // primary is the fail-closed choice (main's copy of ci tables is stale in phase 7).
        let target = match (pinned, state.connection) {
            (Some(p), _) => p.target,
            (None, ConnectionKind::DbConfig(g)) => phase.target_for(g, false, &state.rolls()).0,
            (None, ConnectionKind::Transparent) => Target::Main,
        };
        return (target, Reason::Unparsable, None);
    }
    if let Some(p) = pinned {
        return (p.target, Reason::Pinned, None);
    }
    let idle = state.txn == TxnState::Idle;
    let read = idle && c.kind == StatementKind::Read;
    let (target, pick) = phase.target_for(group, read, &state.rolls());
    let fell_back = pick.is_some_and(|p| p.side == Side::Fallback);
    if idle && matches!(c.kind, StatementKind::Transaction(TxnCommand::Begin { .. })) {
        // Only a hint: the statement after BEGIN makes (and counts) the decision.
        return (target, Reason::BeginDeferred, None);
    }
    let reason = if fell_back {
        Reason::RolloutFallback
    } else if group_reason == Reason::Write && read {
        Reason::Read
    } else {
        group_reason
    };
    (target, reason, pick)
}

fn cross_join(c: &Classification, phase: &Phase) -> Violation {
    let names: Vec<&str> = c.tables.iter().map(|t| t.name.as_str()).collect();
    Violation {
        kind: ViolationKind::CrossJoin,
        mode: phase.violation_mode(ViolationKind::CrossJoin),
        message: violation::cross_join_message(&names, &c.cross_join.schemas),
        schemas: c.cross_join.schemas.clone(),
        table: None,
    }
}

/// GitLab's `table_schemas(select + dml tables) - allowed`. A db_config connection is checked
/// against its own config; a transparent one against the target it runs on.
fn wrong_schema(
    c: &Classification,
    phase: &Phase,
    conn: ConnectionKind,
    target: Target,
) -> Option<Violation> {
    let group = match conn {
        ConnectionKind::DbConfig(g) => g,
        ConnectionKind::Transparent => target.group(),
    };
    let accessed = SchemaMask::of_accessed(c);
    if accessed.minus(phase.allowed_schemas(group)).is_empty() {
        return None;
    }
    let tables: Vec<_> = c
        .tables
        .iter()
        .filter(|t| t.role != TableRole::Ddl)
        .collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let mut schemas: Vec<GitlabSchema> = tables.iter().map(|t| t.schema.clone()).collect();
    schemas.sort();
    schemas.dedup();
    let connection = if target.group() == group {
        target.label()
    } else {
        group.label()
    };
    Some(Violation {
        kind: ViolationKind::WrongSchema,
        mode: phase.violation_mode(ViolationKind::WrongSchema),
        message: violation::wrong_schema_message(
            &names,
            &schemas,
            phase.allowed_names(group),
            connection,
        ),
        schemas,
        table: None,
    })
}

/// Phase 7's write locks: a write or DDL (TRUNCATE included) to a table of the other database
/// than the one `target` connects to. Shared and internal tables stay writable everywhere.
fn locked_write(c: &Classification, phase: &Phase, target: Target) -> Option<Violation> {
    if !phase.locked_writes() {
        return None;
    }
    let t = c.tables.iter().find(|t| {
        t.role != TableRole::Read && table_group(&t.schema).is_some_and(|g| g != target.group())
    })?;
    Some(Violation {
        kind: ViolationKind::LockedTableWrite,
        mode: phase.violation_mode(ViolationKind::LockedTableWrite),
        schemas: vec![t.schema.clone()],
        table: Some(t.name.clone()),
        message: violation::locked_table_message(&t.name),
    })
}
