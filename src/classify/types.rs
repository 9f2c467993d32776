//! Classification results: the values `classify` returns and `route` and the session consume.

use std::fmt;
use std::sync::Arc;

/// A table group (GitLab's `gitlab_schema`). Ordered and displayed by its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GitlabSchema {
    Main,
    Ci,
    Shared,
    Internal,
    /// Another schema named in the dictionary (e.g. `gitlab_pm`, `gitlab_geo`).
    Named(Arc<str>),
    /// A table the dictionary does not know; holds the table name (`undefined_<table>`).
    Undefined(Arc<str>),
}

impl GitlabSchema {
    /// Parses a dictionary value such as `gitlab_main`.
    pub fn from_name(name: &str) -> Self {
        match name {
            "gitlab_main" => Self::Main,
            "gitlab_ci" => Self::Ci,
            "gitlab_shared" => Self::Shared,
            "gitlab_internal" => Self::Internal,
            other => match other.strip_prefix("undefined_") {
                Some(t) => Self::Undefined(Arc::from(t)),
                None => Self::Named(Arc::from(other)),
            },
        }
    }
}

impl fmt::Display for GitlabSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Main => f.write_str("gitlab_main"),
            Self::Ci => f.write_str("gitlab_ci"),
            Self::Shared => f.write_str("gitlab_shared"),
            Self::Internal => f.write_str("gitlab_internal"),
            Self::Named(n) => f.write_str(n),
            Self::Undefined(t) => write!(f, "undefined_{t}"),
        }
    }
}

impl PartialOrd for GitlabSchema {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GitlabSchema {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

/// Transaction-control statements; the session tracks boundaries and savepoint depth from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnCommand {
    Begin { read_only: bool },
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    PrepareTransaction,
    CommitPrepared,
    RollbackPrepared,
}

/// What a statement does, ordered from least to most strict (`Ord` gives "strictest part").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Read,
    Utility,
    Session,
    Transaction(TxnCommand),
    LockingRead,
    Write,
    Ddl,
    /// Did not parse: routed as a write to the main primary (fail closed).
    Unknown,
}

impl StatementKind {
    /// Stable label for metrics and JSON output.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::LockingRead => "locking_read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Transaction(_) => "transaction",
            Self::Session => "session",
            Self::Utility => "utility",
            Self::Unknown => "unknown",
        }
    }

    /// Rank used to pick the strictest statement of a multi-statement string.
    pub fn strictness(&self) -> u8 {
        match self {
            Self::Read => 0,
            Self::Utility => 1,
            Self::Session => 2,
            Self::Transaction(_) => 3,
            Self::LockingRead => 4,
            Self::Write => 5,
            Self::Ddl => 6,
            Self::Unknown => 7,
        }
    }
}

/// How a statement uses a table (pg_query's select / dml / ddl split).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableRole {
    Read,
    Written,
    Ddl,
}

/// One table a statement touches, named as written (schema-qualified when qualified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRef {
    pub name: String,
    pub role: TableRole,
    pub schema: GitlabSchema,
}

/// Whether the schemas of one statement may be joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossJoin {
    pub allowed: bool,
    /// The sorted schemas that were checked (all schemas of the statement).
    pub schemas: Vec<GitlabSchema>,
}

/// Everything routing and metrics need to know about one query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    /// The strictest kind over all statements of the string.
    pub kind: StatementKind,
    /// Kind of each statement, in order (one entry for a single statement).
    pub statements: Vec<StatementKind>,
    /// Unique tables in order of first appearance.
    pub tables: Vec<TableRef>,
    /// Sorted, unique schemas of `tables`.
    pub schemas: Vec<GitlabSchema>,
    pub cross_join: CrossJoin,
    /// The parser's message when the string did not parse.
    pub error: Option<String>,
}

impl Classification {
    /// True when the string touches at least one table.
    pub fn touches_tables(&self) -> bool {
        !self.tables.is_empty()
    }

    /// Comma-joined sorted schemas, the `gitlab_schemas` metric label.
    pub fn schemas_label(&self) -> String {
        schemas_label(&self.schemas)
    }
}

/// Comma-joined schemas, as the `gitlab_schemas` metric labels name them.
pub fn schemas_label(schemas: &[GitlabSchema]) -> String {
    let mut s = String::new();
    for (i, sch) in schemas.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&sch.to_string());
    }
    s
}
