//! Pipeline steps 2–3 as the session drives them: classify each request (cached), ask the pure
//! `route` for a decision under the transaction's config snapshot, record metrics and log
//! violations from what it returned.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::prepared::Statement;
use super::Shared;
use crate::classify::{Classification, CrossJoin, StatementKind};
use crate::config::{Database, Snapshot};
use crate::protocol::frame::Frame;
use crate::protocol::frontend::{bind_statement, parse_view, query_sql};
use crate::route::{
    route, route_shadow, ConnectionKind, Decision, Mode, RouteState, Target, TxnState, Violation,
    ViolationKind,
};

/// Distinct undefined-table label values kept before new ones collapse into one.
const UNDEFINED_LABEL_CAP: usize = 100;

/// Routing state of one client.
pub struct Routing {
    pub state: RouteState,
    /// The snapshot of the current transaction (refreshed only between transactions).
    pub snap: Arc<Snapshot>,
    /// Classification of the client's unnamed prepared statement.
    unnamed: Option<Arc<Classification>>,
    /// The classification of a batch without a statement (a lone Describe or Close).
    empty: Arc<Classification>,
    /// Classifications of the client's named statements, so executing one costs no lookup by text.
    named: HashMap<Box<[u8]>, Arc<Classification>>,
    /// A BEGIN answered by the proxy, sent to the server the first statement picks.
    pub held_begin: Option<Bytes>,
    /// Since the last `take_wrote`: a statement that may have written was sent.
    wrote: bool,
}

/// A statement carried by one client message.
pub struct Carried<'a> {
    pub class: Arc<Classification>,
    /// The SQL text, for logs and refusals: borrowed from the message, or the prepared
    /// statement's shared copy, so routing a statement copies no text.
    pub sql: Sql<'a>,
}

/// SQL text without a copy per statement.
pub enum Sql<'a> {
    Frame(&'a str),
    Prepared(Arc<str>),
}

impl std::ops::Deref for Sql<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Sql::Frame(s) => s,
            Sql::Prepared(s) => s,
        }
    }
}

fn empty_class() -> Classification {
    Classification {
        kind: StatementKind::Utility,
        statements: vec![],
        tables: vec![],
        schemas: vec![],
        cross_join: CrossJoin {
            allowed: true,
            schemas: vec![],
        },
        error: None,
    }
}

impl Routing {
    pub fn new(db: &Database, snap: Arc<Snapshot>) -> Self {
        let connection = db
            .db_config
            .map_or(ConnectionKind::Transparent, ConnectionKind::DbConfig);
        let state = RouteState::new(connection, rand::random::<f64>() * 100.0);
        Self {
            state,
            snap,
            unnamed: None,
            empty: Arc::new(empty_class()),
            named: HashMap::new(),
            held_begin: None,
            wrote: false,
        }
    }

    /// Between transactions: take the newest config and a fresh roll for `random` rollouts.
    pub fn refresh(&mut self, shared: &Shared) {
        if self.state.txn == TxnState::Idle {
            self.snap = shared.config.load_full();
            self.state.txn_roll = rand::random::<f64>() * 100.0;
        }
    }

    /// The statement a Query, Parse or Bind message carries; `None` for other messages.
    pub fn carried<'a>(
        &mut self,
        f: &'a Frame,
        stmts: &HashMap<Box<[u8]>, Arc<Statement>>,
        shared: &Shared,
    ) -> Option<Carried<'a>> {
        let sql = match f.tag {
            b'Q' => Sql::Frame(query_sql(f).unwrap_or_default()),
            b'P' => {
                let p = parse_view(f)?;
                let class = shared.cache.load().get(p.sql);
                if p.name.is_empty() {
                    self.unnamed = Some(class.clone());
                } else {
                    self.named.insert(p.name.into(), class.clone());
                }
                return Some(Carried {
                    class,
                    sql: Sql::Frame(p.sql),
                });
            }
            b'B' => match bind_statement(f) {
                Some([]) => {
                    let class = self.unnamed.clone()?;
                    return Some(Carried {
                        class,
                        sql: Sql::Frame(""),
                    });
                }
                Some(name) => {
                    let sql = Sql::Prepared(stmts.get(name)?.sql.clone());
                    if let Some(class) = self.named.get(name) {
                        return Some(Carried {
                            class: class.clone(),
                            sql,
                        });
                    }
                    sql
                }
                None => return None,
            },
            _ => return None,
        };
        Some(Carried {
            class: shared.cache.load().get(&sql),
            sql,
        })
    }

    /// The strictest statement of an extended-protocol batch, which decides where it runs.
    pub fn unit<'a>(
        &mut self,
        frames: &'a [Frame],
        stmts: &HashMap<Box<[u8]>, Arc<Statement>>,
        shared: &Shared,
    ) -> Carried<'a> {
        let mut best: Option<Carried> = None;
        for f in frames {
            if let Some(c) = self.carried(f, stmts, shared) {
                if best
                    .as_ref()
                    .is_none_or(|b| c.class.kind.strictness() > b.class.kind.strictness())
                {
                    best = Some(c);
                }
            }
        }
        best.unwrap_or_else(|| Carried {
            class: self.empty.clone(),
            sql: Sql::Frame(""),
        })
    }

    /// Routes one statement and records what the decision says.
    pub fn decide(&self, carried: &Carried, shared: &Shared, client: u64) -> Decision {
        let phase = &self.snap.phase;
        let c = &carried.class;
        let d = route(c, phase, &self.state);
        let m = &shared.metrics;
        let tm = m.target(d.target);
        tm.statements[usize::from(c.kind.strictness())].inc();
        tm.routes[d.reason.index()].inc();
        if c.kind == StatementKind::Unknown {
            m.unparsable.inc();
            tracing::warn!(client, error = ?c.error, sql = %truncate(&carried.sql), "unparsable statement sent to the main primary");
        }
        if c.touches_tables() && phase.sample_schemas_used(rand::random::<f64>() * 100.0) {
            let label = shared.bounded_label(c.schemas_label());
            m.schemas_used
                .with_label_values(&[label.as_str(), d.target.label()])
                .inc();
        }
        for v in &d.violations {
            record_violation(v, d.target, shared);
            // Logs and SHOW VIOLATIONS are rate-limited per kind and schemas; metrics count all.
            if !shared.should_log_violation(v.kind.label(), &c.schemas_label()) {
                continue;
            }
            shared.remember_violation(client, v, &carried.sql);
            tracing::warn!(
                client,
                kind = v.kind.label(),
                mode = v.mode.label(),
                target = d.target.label(),
                tables = ?c.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
                schemas = %c.schemas_label(),
                sql = %truncate(&carried.sql),
                "{}",
                v.message
            );
        }
        if let Some(sd) = route_shadow(c, phase, &self.state) {
            m.shadow_routes
                .with_label_values(&[sd.target.label()])
                .inc();
            for v in &sd.violations {
                m.shadow_violations
                    .with_label_values(&[v.kind.label(), v.mode.label()])
                    .inc();
            }
        }
        d
    }

    /// Applies a handled statement to the session's routing state.
    pub fn after(&mut self, carried: &Carried, d: &Decision) {
        self.state.after_statement(&carried.class, d);
        // Functions that write are classified as writes; a plain read or SET cannot write.
        self.wrote |= carried.class.kind.strictness() >= StatementKind::LockingRead.strictness();
    }

    /// Whether a possibly-writing statement was sent since the last call.
    pub fn take_wrote(&mut self) -> bool {
        std::mem::take(&mut self.wrote)
    }

    /// In session pooling one server serves the whole session: the group's write target.
    pub fn session_target(&self, group_hint: &Decision) -> Target {
        let phase = &self.snap.phase;
        phase
            .target_for(
                group_hint.group,
                false,
                self.state.client_roll,
                self.state.txn_roll,
            )
            .0
    }
}

fn record_violation(v: &Violation, target: Target, shared: &Shared) {
    let m = &shared.metrics;
    let schemas = shared.bounded_label(
        v.schemas
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
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

/// Statement text for logs: long SQL is cut at a character boundary.
pub fn truncate(sql: &str) -> &str {
    let mut end = sql.len().min(500);
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    &sql[..end]
}

/// The cap on distinct `undefined_<table>` label values, shared with `Shared::bounded_label`.
pub const fn undefined_label_cap() -> usize {
    UNDEFINED_LABEL_CAP
}
