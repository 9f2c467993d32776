//! Pipeline step 3 (client → framing → classify → **route** → pool → server): per-session
//! transaction tracking for the cross-database modification check (GitLab's
//! `PreventCrossDatabaseModification` analyzer), as pure transitions over classifications.

use crate::classify::{Classification, GitlabSchema, StatementKind, TableRole, TxnCommand};

use super::schemas::SchemaMask;
use super::violation::cross_database_message;

/// What one transaction has written so far, and how deep its savepoints go.
///
/// Depth follows GitLab's analyzer (+1 BEGIN/START/SAVEPOINT, −1 RELEASE/ROLLBACK TO) except
/// where PostgreSQL itself differs: COMMIT, ROLLBACK and PREPARE TRANSACTION end the whole
/// transaction whatever the savepoint depth, a BEGIN inside a transaction is a no-op, and
/// RELEASE/ROLLBACK TO never end it. On well-nested Rails traffic the counts are identical.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnTracker {
    depth: u32,
    written: SchemaMask,
    /// Written tables in order of first write, deduplicated; only for the message.
    tables: WrittenTables,
}

/// The written tables' names, whose strings the next transaction reuses: a steady stream of
/// writing transactions allocates nothing here. At most `KEEP` are kept between transactions.
#[derive(Debug, Default)]
struct WrittenTables {
    slots: Vec<(String, GitlabSchema)>,
    len: usize,
}

impl WrittenTables {
    const KEEP: usize = 8;

    fn iter(&self) -> std::slice::Iter<'_, (String, GitlabSchema)> {
        self.slots[..self.len].iter()
    }

    fn contains(&self, name: &str) -> bool {
        self.iter().any(|(n, _)| n == name)
    }

    fn push(&mut self, name: &str, schema: &GitlabSchema) {
        match self.slots.get_mut(self.len) {
            Some((n, s)) => {
                n.clear();
                n.push_str(name);
                s.clone_from(schema);
            }
            None => self.slots.push((name.to_owned(), schema.clone())),
        }
        self.len += 1;
    }

    fn clear(&mut self) {
        self.len = 0;
        self.slots.truncate(Self::KEEP);
    }
}

/// A copy holds the written tables only: planning copies an idle session's state, which must
/// not allocate for the spare strings.
impl Clone for WrittenTables {
    fn clone(&self) -> Self {
        let slots = self.slots[..self.len].to_vec();
        Self {
            len: slots.len(),
            slots,
        }
    }
}

impl PartialEq for WrittenTables {
    fn eq(&self, other: &Self) -> bool {
        self.slots[..self.len] == other.slots[..other.len]
    }
}

impl Eq for WrittenTables {}

/// A transaction that has written tables of both databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossDbModification {
    /// Sorted schemas of all tables written in the transaction.
    pub schemas: Vec<GitlabSchema>,
    /// Written tables in order of first write.
    pub tables: Vec<String>,
    /// GitLab's message.
    pub message: String,
}

/// Tables a statement modifies: `dml_tables`, or every table of a locking read (GitLab's
/// `' for update'` rule). TRUNCATE is DDL to pg_query, so GitLab ignores it here; so do we.
fn modified(c: &Classification) -> impl Iterator<Item = &crate::classify::TableRef> {
    let locking = c.kind == StatementKind::LockingRead;
    c.tables
        .iter()
        .filter(move |t| locking || t.role == TableRole::Written)
}

impl TxnTracker {
    pub fn depth(&self) -> u32 {
        self.depth
    }

    pub fn in_transaction(&self) -> bool {
        self.depth > 0
    }

    /// Whether any part of this query string runs inside a transaction block.
    fn runs_in_transaction(&self, c: &Classification) -> bool {
        self.depth > 0
            || c.statements
                .iter()
                .any(|k| matches!(k, StatementKind::Transaction(TxnCommand::Begin { .. })))
    }

    /// What `observe` would report, without changing anything: `route` calls this so that the
    /// violation is known before the statement runs (and can be refused).
    ///
    /// Rule (GitLab's `allow_cross_transactions` with the shipped schema YAML): the written
    /// tables of one transaction must belong to one schema, where shared and internal tables go
    /// with any. gitlab_main with gitlab_ci is a violation; so is an undefined table with
    /// gitlab_main, gitlab_ci or another undefined table, because GitLab gives each unknown
    /// table its own `undefined_<table>` schema. Named schemas (gitlab_pm) live in main.
    /// Reported for every writing statement once the transaction spans two.
    pub fn check(&self, c: &Classification) -> Option<CrossDbModification> {
        if !self.runs_in_transaction(c) {
            return None;
        }
        let new = modified(c).fold(SchemaMask::EMPTY, |m, t| m | SchemaMask::of(&t.schema));
        if new.is_empty() || !self.spans_schemas(self.written | new, c) {
            return None;
        }
        let mut tables: Vec<(&str, &GitlabSchema)> =
            self.tables.iter().map(|(n, s)| (n.as_str(), s)).collect();
        for t in modified(c) {
            if !tables.iter().any(|(n, _)| *n == t.name) {
                tables.push((&t.name, &t.schema));
            }
        }
        let mut schemas: Vec<GitlabSchema> = tables.iter().map(|(_, s)| (*s).clone()).collect();
        schemas.sort();
        schemas.dedup();
        let names: Vec<&str> = tables.iter().map(|(n, _)| *n).collect();
        Some(CrossDbModification {
            message: cross_database_message(&schemas, &names),
            tables: names.into_iter().map(str::to_owned).collect(),
            schemas,
        })
    }

    /// Whether the written schemas `all` (this transaction's and `c`'s) are more than one.
    fn spans_schemas(&self, all: SchemaMask, c: &Classification) -> bool {
        if all.spans_both() {
            return true;
        }
        if !all.contains(SchemaMask::UNDEFINED) {
            return false;
        }
        if all.intersects(SchemaMask::MAIN | SchemaMask::NAMED) {
            return true;
        }
        let mut undefined = self
            .tables
            .iter()
            .map(|(_, s)| s)
            .chain(modified(c).map(|t| &t.schema))
            .filter(|s| matches!(s, GitlabSchema::Undefined(_)));
        let first = undefined.next();
        undefined.any(|s| Some(s) != first)
    }

    /// Applies an executed query string: records its writes while a transaction is open and
    /// moves the depth. Returns what `check` would have reported.
    pub fn observe(&mut self, c: &Classification) -> Option<CrossDbModification> {
        let found = self.check(c);
        let in_txn_before = self.runs_in_transaction(c);
        for kind in &c.statements {
            if let StatementKind::Transaction(cmd) = kind {
                self.apply(*cmd);
            }
        }
        // Per-statement table lists are not kept by the classifier, so a string that opens or
        // closes a transaction records all its writes as inside it (conservative).
        if in_txn_before {
            for t in modified(c) {
                self.written |= SchemaMask::of(&t.schema);
                if !self.tables.contains(&t.name) {
                    self.tables.push(&t.name, &t.schema);
                }
            }
        }
        if self.depth == 0 {
            self.reset();
        }
        found
    }

    fn apply(&mut self, cmd: TxnCommand) {
        self.depth = match cmd {
            TxnCommand::Begin { .. } => self.depth.max(1),
            TxnCommand::Savepoint if self.depth > 0 => self.depth + 1,
            TxnCommand::Savepoint => 0,
            TxnCommand::Release | TxnCommand::RollbackTo => {
                self.depth.saturating_sub(1).max(self.depth.min(1))
            }
            TxnCommand::Commit | TxnCommand::Rollback | TxnCommand::PrepareTransaction => 0,
            TxnCommand::CommitPrepared | TxnCommand::RollbackPrepared => self.depth,
        };
    }

    /// Forgets the transaction: the server reported idle (ReadyForQuery `I`).
    pub fn reset(&mut self) {
        self.depth = 0;
        self.written = SchemaMask::EMPTY;
        self.tables.clear();
    }
}
