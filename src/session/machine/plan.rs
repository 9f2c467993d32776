//! Session step, detached: what to do with a batch that arrives while no server is attached.
//! Either the proxy answers it itself (a BEGIN it holds back, a transaction it knows failed,
//! statement bookkeeping), or the batch's lead execution picks the server to attach.

use std::sync::Arc;

use bytes::BytesMut;

use super::memo::text_key;
use super::{Ctx, Held, Session};
use crate::classify::{Classification, ClassifyCache, CrossJoin, StatementKind};
use crate::protocol::frame::Frame;
use crate::protocol::frontend::{bind_statement, parse_view, query_sql, target_of};
use crate::protocol::Front;
use crate::route::{route, Decision, Group, Phase, Reason, RouteState, Target, TxnState};

/// What the async loop must do with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The proxy answered it; the replies are in the client buffer.
    Answered,
    /// Check out a server for `target` and run the batch there. `hold_status`: the batch only
    /// prepares or describes inside a transaction whose BEGIN stays held.
    Attach {
        target: Target,
        group: Group,
        hold_status: bool,
        /// The batch executes nothing (it prepares or describes).
        prepares: bool,
    },
}

/// A batch of one Query message: its text and classification.
pub(super) type LoneQuery<'u> = (&'u str, Arc<Classification>);

/// The decision planned for a lone Query of one statement, kept for its forwarding: nothing
/// changes the routing state between the two (a cutover that changes the config drops it).
#[derive(Debug)]
pub(super) struct Planned {
    /// Where the statement's text sits (the message is the same one when forwarded).
    sql: (usize, usize),
    decision: Decision,
}

impl Planned {
    /// The decision, if it was planned for `sql`.
    pub(super) fn decision_for(self, sql: &str) -> Option<Decision> {
        (self.sql == text_key(sql)).then_some(self.decision)
    }
}

/// The execution that decides where a batch runs.
enum Lead {
    /// The first statement of a transaction the batch opens, else its strictest execution.
    Executes(Decision),
    /// The batch executes nothing: where its first statement would run.
    Prepares(Decision),
    /// A lone Query of one statement (text at the address given): it executes, and its
    /// forwarding takes the decision over rather than route it again.
    Lone(Decision, (usize, usize)),
}

impl Session {
    /// Plans a batch read while detached (a Query, or extended messages up to Sync or Flush).
    pub fn plan(&mut self, unit: &[Frame], ctx: &mut Ctx, reply: &mut BytesMut) -> Plan {
        debug_assert!(self.link.is_none(), "plan is for a detached session");
        // Only what `remember` gave for this batch: older addresses may have been reused.
        self.memo
            .truncate(usize::from(std::mem::take(&mut self.seeded)));
        self.memo_open = true;
        self.planned = None;
        // A lone Query (most requests) is read and classified once for both questions.
        let lone = match unit {
            [f] if f.front() == Front::Query => Some(self.query_class(ctx.cache, f)),
            _ => None,
        };
        if self.answer_locally(unit, lone.as_ref(), ctx, reply) {
            self.batch_done();
            return Plan::Answered;
        }
        let (d, executes, lone_at) = match self.lead(unit, lone, ctx) {
            Lead::Executes(d) => (d, true, None),
            Lead::Prepares(d) => (d, false, None),
            Lead::Lone(d, sql) => (d, true, Some(sql)),
        };
        let plan = Plan::Attach {
            target: self.pool_target(&d),
            group: d.group,
            hold_status: !executes && self.held != Held::None,
            prepares: !executes,
        };
        if let Some(sql) = lone_at {
            self.planned = Some(Planned { sql, decision: d });
        }
        plan
    }

    fn lead(&mut self, unit: &[Frame], lone: Option<LoneQuery>, ctx: &mut Ctx) -> Lead {
        if let Some(l) = lone.and_then(|q| self.single_statement_lead(q, ctx)) {
            return l;
        }
        let snap = self.snap.clone();
        let mut search = LeadSearch {
            sim: self.route.clone(),
            best: None,
            best_rank: 0,
        };
        let mut first_statement: Option<Arc<Classification>> = None;
        let mut batch_unnamed: Option<Arc<Classification>> = None;
        for (i, f) in unit.iter().enumerate() {
            match f.front() {
                Front::Query => {
                    let (sql, whole) = self.query_class(ctx.cache, f);
                    let each = ctx.cache.each(sql, &whole);
                    for class in each.as_deref().map_or(std::slice::from_ref(&whole), |e| e) {
                        if let Some(d) = search.consider(class, &snap.phase) {
                            return Lead::Executes(d);
                        }
                    }
                }
                Front::Parse => {
                    if let Some(p) = parse_view(f) {
                        let c = self.class_of(ctx.cache, p.sql);
                        if p.name.is_empty() {
                            batch_unnamed = Some(c.clone());
                        }
                        note_statement(&mut first_statement, c);
                    }
                }
                Front::Describe => {
                    if let Some((b'S', name)) = target_of(f) {
                        if let Some(c) = self.statement_class(unit, i, name, &batch_unnamed, ctx) {
                            note_statement(&mut first_statement, c);
                        }
                    }
                }
                Front::Bind => {
                    let name = bind_statement(f).unwrap_or_default();
                    if let Some(c) = self.statement_class(unit, i, name, &batch_unnamed, ctx) {
                        if let Some(d) = search.consider(&c, &snap.phase) {
                            return Lead::Executes(d);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(d) = search.best {
            return Lead::Executes(d);
        }
        // Routed in the state the batch leaves: a BEGIN in front of a describe means the
        // described statement will run inside that transaction.
        let class = first_statement.unwrap_or_else(empty_class);
        Lead::Prepares(route(&class, &snap.phase, &search.sim))
    }

    /// The text of Query message `f` with its classification. A text that is not UTF-8 is
    /// unknown (so it runs on the main primary and is counted), never the empty query.
    pub(super) fn query_class<'f>(
        &mut self,
        cache: &ClassifyCache,
        f: &'f Frame,
    ) -> (&'f str, Arc<Classification>) {
        match query_sql(f) {
            Some(sql) => (sql, self.class_of(cache, sql)),
            None => ("", Arc::new(cache.classifier().not_utf8(f.body().len()))),
        }
    }

    /// A lone Query of one statement (most requests): its own decision leads, with no copy of
    /// the routing state to replay it on. A BEGIN held back leaves it to the search.
    fn single_statement_lead(&mut self, (sql, whole): LoneQuery, ctx: &mut Ctx) -> Option<Lead> {
        if ctx.cache.each(sql, &whole).is_some() {
            return None;
        }
        let d = route(&whole, &self.snap.phase, &self.route);
        (d.reason != Reason::BeginDeferred).then_some(Lead::Lone(d, text_key(sql)))
    }
}

/// The batch's executions replayed on a copy of the routing state.
struct LeadSearch {
    sim: RouteState,
    best: Option<Decision>,
    best_rank: u8,
}

impl LeadSearch {
    /// The decision that places the batch when `class` opens its transaction's work; else
    /// remembers the strictest execution.
    fn consider(&mut self, class: &Classification, phase: &Phase) -> Option<Decision> {
        let d = route(class, phase, &self.sim);
        if d.reason == Reason::BeginDeferred {
            self.sim.after_statement(class, &d);
            return None;
        }
        if matches!(self.sim.txn, TxnState::InTransaction { .. }) {
            return Some(d);
        }
        self.sim.after_statement(class, &d);
        let rank = class.kind.strictness();
        if self.best.is_none() || rank > self.best_rank {
            self.best_rank = rank;
            self.best = Some(d);
        }
        None
    }
}

/// Keeps the first statement that touches tables: a BEGIN executed in front of a statement
/// that is only being described must not decide where that statement's transaction runs.
fn note_statement(first: &mut Option<Arc<Classification>>, c: Arc<Classification>) {
    if first
        .as_ref()
        .is_none_or(|f| !f.touches_tables() && c.touches_tables())
    {
        *first = Some(c);
    }
}

impl Session {
    /// The classification of statement `name` as message `i` of the batch would find it: a
    /// Parse earlier in the batch, else the client's statements.
    pub(super) fn statement_class(
        &mut self,
        unit: &[Frame],
        i: usize,
        name: &[u8],
        batch_unnamed: &Option<Arc<Classification>>,
        ctx: &mut Ctx,
    ) -> Option<Arc<Classification>> {
        if name.is_empty() {
            if let Some(c) = batch_unnamed {
                return Some(c.clone());
            }
            return self.stmts.unnamed.class(ctx.cache).cloned();
        }
        let parsed = unit[..i]
            .iter()
            .rev()
            .filter(|f| f.front() == Front::Parse)
            .filter_map(parse_view)
            .find(|p| p.name == name);
        if let Some(p) = parsed {
            return Some(self.class_of(ctx.cache, p.sql));
        }
        self.stmts.get_mut(name).map(|s| s.class(ctx.cache).clone())
    }
}

/// The classification of an empty query, one for the process rather than one per client.
fn empty_class() -> Arc<Classification> {
    static EMPTY: std::sync::LazyLock<Arc<Classification>> =
        std::sync::LazyLock::new(|| Arc::new(empty()));
    EMPTY.clone()
}

fn empty() -> Classification {
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
