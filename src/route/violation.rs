//! Pipeline step 3 (client → framing → classify → **route** → pool → server): the rule
//! violations `route` reports, and the PostgreSQL error a session sends when one is enforced.

use serde::Deserialize;

use crate::classify::GitlabSchema;

/// The four things that break when one database becomes two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// One statement joins tables of both databases.
    CrossJoin,
    /// One transaction writes tables of both databases.
    CrossDatabaseModification,
    /// A statement runs on a target whose allowed schemas exclude some of its tables.
    WrongSchema,
    /// Phase 7: a write to a table whose live copy is in the other database.
    LockedTableWrite,
}

impl ViolationKind {
    pub const ALL: [ViolationKind; 4] = [
        ViolationKind::CrossJoin,
        ViolationKind::CrossDatabaseModification,
        ViolationKind::WrongSchema,
        ViolationKind::LockedTableWrite,
    ];

    /// Stable label for metrics and logs; also the key in a phase file's `[violations]`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::CrossJoin => "cross_join",
            Self::CrossDatabaseModification => "cross_database_modification",
            Self::WrongSchema => "wrong_schema",
            Self::LockedTableWrite => "locked_table_write",
        }
    }

    /// SQLSTATE sent when enforced. Locked writes reuse GitLab's trigger code so existing
    /// alerts keep matching; the others are new, so pick the closest standard class:
    /// - cross-join `0A000` feature_not_supported: valid SQL the split topology cannot run;
    /// - cross-database modification `25000` invalid_transaction_state: the transaction, not the
    ///   statement alone, is at fault;
    /// - wrong schema `42501` insufficient_privilege: the connection may not touch that schema,
    ///   as with a missing GRANT; retrying will not help.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::CrossJoin => "0A000",
            Self::CrossDatabaseModification => "25000",
            Self::WrongSchema => "42501",
            Self::LockedTableWrite => "2F002",
        }
    }
}

/// Whether a violation is only counted or also refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Metric + log; the statement runs.
    #[default]
    Observe,
    /// ErrorResponse to the client instead of running the statement; the connection stays usable.
    Enforce,
}

impl Mode {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Enforce => "enforce",
        }
    }
}

/// One rule a statement broke, with everything a log line or an ErrorResponse needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub mode: Mode,
    /// The schemas involved, sorted.
    pub schemas: Vec<GitlabSchema>,
    /// The write-protected table, for `LockedTableWrite`.
    pub table: Option<String>,
    /// GitLab's wording, without the SQL text (the session adds it; see `pg_error`).
    pub message: String,
}

/// The fields of the ErrorResponse a session sends for an enforced violation (severity ERROR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    pub sqlstate: &'static str,
    pub message: String,
    pub hint: Option<&'static str>,
}

/// Longest SQL text quoted in a cross-join error, in bytes; clients log these messages.
pub const MAX_SQL_IN_ERROR: usize = 1000;

impl Violation {
    /// The error to send when this violation is enforced. `sql` is quoted (truncated) in the
    /// cross-join message, as GitLab's spec helper did; the other messages don't carry it.
    pub fn pg_error(&self, sql: &str) -> PgError {
        let message = match self.kind {
            ViolationKind::CrossJoin => format!(
                "{} discovered when executing query '{}'",
                self.message,
                truncate(sql, MAX_SQL_IN_ERROR)
            ),
            _ => self.message.clone(),
        };
        let hint = match self.kind {
            ViolationKind::LockedTableWrite | ViolationKind::WrongSchema => {
                Some("Make sure you are using the right database connection")
            }
            ViolationKind::CrossJoin | ViolationKind::CrossDatabaseModification => None,
        };
        PgError {
            sqlstate: self.kind.sqlstate(),
            message,
            hint,
        }
    }
}

fn truncate(sql: &str, max: usize) -> &str {
    if sql.len() <= max {
        return sql;
    }
    let mut end = max;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    &sql[..end]
}

/// `'a, b'` lists as GitLab's messages print them.
pub(crate) fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&item.to_string());
    }
    out
}

pub(crate) fn cross_join_message(tables: &[&str], schemas: &[GitlabSchema]) -> String {
    format!(
        "Unsupported cross-join across '{}' querying '{}'",
        join(tables),
        join(schemas)
    )
}

pub(crate) fn cross_database_message(schemas: &[GitlabSchema], tables: &[&str]) -> String {
    format!(
        "Cross-database data modification of '{}' were detected within a transaction modifying the '{}' tables.",
        join(schemas),
        join(tables)
    )
}

pub(crate) fn locked_table_message(table: &str) -> String {
    format!("Table: \"{table}\" is write protected within this Gitlab database.")
}

/// GitLab's `CrossSchemaAccessError` text: tables in SQL order, quoted like a Ruby array.
pub(crate) fn wrong_schema_message(
    tables: &[&str],
    schemas: &[GitlabSchema],
    allowed: &[&str],
    connection: &str,
) -> String {
    let quoted: Vec<String> = tables.iter().map(|t| format!("\"{t}\"")).collect();
    let schema_list: Vec<String> = schemas.iter().map(ToString::to_string).collect();
    format!(
        "The query tried to access [{}] (of {}) which is outside of allowed schemas ([{}]) for the current connection '{}'",
        quoted.join(", "),
        schema_list.join(","),
        allowed.join(", "),
        connection
    )
}
