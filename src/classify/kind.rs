//! Classify step (client → framing → **classify** → route → pool → server): the statement kind of
//! one parsed statement, which decides primary vs replica and transaction boundaries.

use sqlparser::ast::{
    Expr, Statement, TransactionAccessMode, TransactionMode, UtilityOption, Value,
};

use super::tables::Facts;
use super::{StatementKind, TxnCommand};

/// The kind of `statement`, given what the table walk found inside it.
pub(super) fn kind_of(statement: &Statement, facts: &Facts) -> StatementKind {
    use StatementKind::*;
    match statement {
        Statement::Query(_) => {
            if facts.select_into || facts.nested_write || facts.calls_write_function {
                Write
            } else if facts.locking {
                LockingRead
            } else {
                Read
            }
        }
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) | Statement::Merge(_) => {
            Write
        }
        Statement::Copy { to: true, .. } if !facts.calls_write_function => Read,
        Statement::Copy { .. } => Write,
        Statement::Explain { analyze, options, statement, .. } => {
            // Without ANALYZE nothing executes, and PostgreSQL plans even writes on a standby.
            if *analyze || options.as_deref().is_some_and(has_analyze) {
                kind_of(statement, facts)
            } else {
                Read
            }
        }
        Statement::ExplainTable { .. } => Read,
        Statement::StartTransaction { modes, .. } => Transaction(TxnCommand::Begin {
            read_only: modes.contains(&TransactionMode::AccessMode(TransactionAccessMode::ReadOnly)),
        }),
        Statement::Commit { .. } => Transaction(TxnCommand::Commit),
        Statement::Rollback { savepoint: Some(_), .. } => Transaction(TxnCommand::RollbackTo),
        Statement::Rollback { .. } => Transaction(TxnCommand::Rollback),
        Statement::Savepoint { .. } => Transaction(TxnCommand::Savepoint),
        Statement::ReleaseSavepoint { .. } => Transaction(TxnCommand::Release),
        Statement::Set(_)
        | Statement::Reset(_)
        | Statement::Discard { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::Deallocate { .. }
        // PREPARE only defines session state; EXECUTE is what runs it.
        | Statement::Prepare { .. } => Session,
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. }
        | Statement::ShowCreate { .. } => Read,
        // Cursors live in a session or transaction; what they read is reported as tables.
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => Utility,
        // The prepared text is not visible here, procedures and NOTIFY have side effects a
        // standby refuses: all of them need the primary.
        Statement::Execute { .. } | Statement::Call(_) | Statement::NOTIFY { .. } => Write,
        // Everything else changes the schema or the server (CREATE/ALTER/DROP/TRUNCATE/LOCK/
        // GRANT/COMMENT/VACUUM/ANALYZE ...): the strictest parsed kind is the safe default.
        _ => Ddl,
    }
}

/// `EXPLAIN (ANALYZE)`, `(ANALYZE true)`, `(ANALYZE on)` execute the statement; `false`/`off`/`0` don't.
fn has_analyze(options: &[UtilityOption]) -> bool {
    options.iter().any(|option| {
        option.name.value.eq_ignore_ascii_case("analyze")
            && match &option.arg {
                None => true,
                Some(Expr::Value(v)) => match &v.value {
                    Value::Boolean(b) => *b,
                    Value::Number(n, _) => n != "0",
                    Value::SingleQuotedString(s) => !is_off(s),
                    _ => true,
                },
                Some(Expr::Identifier(ident)) => !is_off(&ident.value),
                Some(_) => true,
            }
    })
}

fn is_off(word: &str) -> bool {
    ["false", "off", "0", "no"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}
