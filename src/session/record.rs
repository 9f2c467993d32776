//! Session step, beside the machine: what each routed execution leaves behind in the proxy's
//! metrics, logs and SHOW VIOLATIONS. The machine decides; this only records.

use super::machine::{Execution, Observer};
use std::cell::RefCell;

use prometheus::IntCounter;

use crate::classify::{schemas_label, GitlabSchema, StatementKind};
use crate::route::{route_shadow, Mode, Target, Violation, ViolationKind};
use crate::shared::{truncate, Shared};

/// Records executions of one client into the proxy's metrics.
pub struct Recorder<'a> {
    pub shared: &'a Shared,
    pub client: u64,
}

impl Observer for Recorder<'_> {
    fn executed(&mut self, e: &Execution<'_>) {
        let (c, d, shared) = (e.class, e.decision, self.shared);
        let phase = &e.snap.phase;
        let m = &shared.metrics;
        let tm = m.target(d.target);
        tm.statements[usize::from(c.kind.strictness())].inc();
        tm.routes[d.reason.index()].inc();
        if let Some(p) = d.rollout {
            m.rollout_decisions[p.rollout.index()][p.side.index()].inc();
        }
        if c.kind == StatementKind::Unknown {
            m.unparsable.inc();
            tracing::warn!(client = self.client, error = ?c.error, sql = %truncate(e.sql), "unparsable statement sent to the main primary");
        }
        if c.touches_tables() && phase.sample_schemas_used(|| rand::random::<f64>() * 100.0) {
            count_schemas_used(&c.schemas, d.target, shared);
        }
        for v in &d.violations {
            record_violation(v, d.target, shared);
            shared.last_violation_ms.store(
                crate::cutover::unix_ms(std::time::SystemTime::now()),
                std::sync::atomic::Ordering::Relaxed,
            );
            // Logs and SHOW VIOLATIONS are rate-limited per kind and schemas; metrics count all.
            if !shared.should_log_violation(v.kind.label(), &c.schemas_label()) {
                continue;
            }
            shared.remember_violation(self.client, v, e.sql);
            tracing::warn!(
                client = self.client,
                kind = v.kind.label(),
                mode = v.mode.label(),
                target = d.target.label(),
                tables = ?c.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
                schemas = %c.schemas_label(),
                sql = %truncate(e.sql),
                "{}",
                v.message
            );
        }
        if let Some(sd) = route_shadow(c, phase, e.state) {
            m.shadow_routes
                .with_label_values(&[sd.target.label()])
                .inc();
            for v in &sd.violations {
                m.shadow_violations
                    .with_label_values(&[v.kind.label(), v.mode.label()])
                    .inc();
            }
        }
    }
}

/// Resolved `gitlab_schemas_used` counters of this worker thread, by schemas and target: the
/// counter is found without formatting the label, hashing it and taking the vector's lock,
/// once per statement. Bounded; past it, statements resolve their counter each time.
const USED_KEEP: usize = 64;

type UsedCounters = Vec<(Vec<GitlabSchema>, Target, IntCounter)>;

thread_local! {
    static USED: RefCell<UsedCounters> = const { RefCell::new(Vec::new()) };
}

fn count_schemas_used(schemas: &[GitlabSchema], target: Target, shared: &Shared) {
    let counted = USED.with(|u| {
        let u = u.borrow();
        let found = u
            .iter()
            .find(|(s, t, _)| *t == target && s.as_slice() == schemas);
        found.map(|(_, _, c)| c.inc()).is_some()
    });
    if counted {
        return;
    }
    let label = shared.bounded_label(schemas_label(schemas));
    let counter = shared
        .metrics
        .schemas_used
        .with_label_values(&[label.as_str(), target.label()]);
    counter.inc();
    USED.with(|u| {
        let mut u = u.borrow_mut();
        if u.len() < USED_KEEP {
            u.push((schemas.to_vec(), target, counter));
        }
    });
}

fn record_violation(v: &Violation, target: Target, shared: &Shared) {
    let m = &shared.metrics;
    let schemas = shared.bounded_label(schemas_label(&v.schemas));
    match v.kind {
        ViolationKind::CrossJoin => m.cross_join.with_label_values(&[schemas.as_str()]).inc(),
        ViolationKind::CrossDatabaseModification => m
            .cross_db_modification
            .with_label_values(&[schemas.as_str()])
            .inc(),
        ViolationKind::WrongSchema => m
            .wrong_schema
            .with_label_values(&[target.label(), schemas.as_str()])
            .inc(),
        ViolationKind::LockedTableWrite => m
            .locked_table_write
            .with_label_values(&[target.label(), schemas.as_str()])
            .inc(),
    }
    if v.mode == Mode::Enforce {
        m.rejected.with_label_values(&[v.kind.label()]).inc();
    }
}
