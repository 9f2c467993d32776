//! Classify step (client → framing → **classify** → route → pool → server): the pure
//! `Classifier::classify` that turns one query string into a `Classification`.

use std::sync::Arc;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::TokenWithSpan;

use super::fallback;
use super::tables::{self, Facts};
use super::{
    kind, lex, Classification, CrossJoin, Dictionary, FunctionInfo, Functions, GitlabSchema,
    SchemaRules, StatementKind, TableRef, TableRole,
};

/// Deeper nesting than this is an error, not a stack overflow. GitLab's deepest generated
/// queries stay far below it; pg_query fails similarly on absurd depth.
const RECURSION_LIMIT: usize = 100;

/// Immutable classification context built from config; cheap to share.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub dictionary: Arc<Dictionary>,
    pub rules: Arc<SchemaRules>,
    /// Which function calls make a read a write: built-ins, the configured `write_functions`
    /// and the volatility learned from the catalog.
    pub functions: Arc<Functions>,
}

/// One statement of a query string, classified.
struct Part {
    kind: StatementKind,
    tables: Vec<(String, TableRole)>,
}

impl Classifier {
    pub fn new(
        dictionary: Dictionary,
        rules: SchemaRules,
        extra_write_functions: &[String],
    ) -> Self {
        Self {
            dictionary: Arc::new(dictionary),
            rules: Arc::new(rules),
            functions: Arc::new(Functions::new(extra_write_functions)),
        }
    }

    /// The same classifier with the functions of one catalog read (`pg_proc`); they replace
    /// what an earlier read taught, the configured overrides stay.
    pub fn learn_functions(&self, rows: impl IntoIterator<Item = FunctionInfo>) -> Classifier {
        let mut functions = self.functions.without_learned();
        functions.learn(rows);
        Classifier {
            functions: Arc::new(functions),
            ..self.clone()
        }
    }

    /// The shipped dictionary and GitLab's 2022 rules.
    pub fn gitlab_default() -> Self {
        Self::new(
            Dictionary::gitlab_default(),
            SchemaRules::gitlab_2022(),
            &[],
        )
    }

    /// Classifies one query string (possibly several statements). Never panics: what does not
    /// parse is `Unknown` with the parser's message, which routing sends to the primary.
    ///
    /// ```
    /// use pgdecomp::classify::{Classifier, StatementKind};
    ///
    /// let c = Classifier::gitlab_default().classify(
    ///     r#"SELECT "ci_builds".* FROM "ci_builds" JOIN "projects" ON "projects"."id" = "ci_builds"."project_id" /*application:web*/"#,
    /// );
    /// assert_eq!(c.kind, StatementKind::Read);
    /// assert_eq!(c.schemas_label(), "gitlab_ci,gitlab_main");
    /// assert!(!c.cross_join.allowed);
    ///
    /// let bad = Classifier::gitlab_default().classify("SELEC 1");
    /// assert_eq!(bad.kind, StatementKind::Unknown);
    /// assert!(bad.error.is_some());
    /// ```
    pub fn classify(&self, sql: &str) -> Classification {
        let (parts, error) = self.parts(sql);
        self.assemble(parts, error)
    }

    /// A statement too long to parse within the memory bound: unknown, so it fails closed
    /// (main primary, counted) like any statement the parser cannot read.
    pub fn too_long(&self, len: usize, limit: usize) -> Classification {
        let message = format!(
            "statement of {len} bytes not parsed: its literal-free text is longer than \
             classify.max_statement_bytes ({limit})"
        );
        self.assemble(vec![unknown()], Some(message))
    }

    /// A statement whose text is not UTF-8 (a client_encoding other than UTF8) or not
    /// terminated: it cannot be parsed, so it is unknown and fails closed like any unparsable
    /// statement.
    pub fn not_utf8(&self, len: usize) -> Classification {
        let message = format!(
            "statement of {len} bytes not parsed: its text is not valid UTF-8 (pgdecomp reads \
             statements as UTF-8; set client_encoding to UTF8)"
        );
        self.assemble(vec![unknown()], Some(message))
    }

    /// Each statement of a multi-statement string classified on its own, in order: the session
    /// routes, checks and counts them one by one. A single statement gives one entry.
    pub fn classify_each(&self, sql: &str) -> Vec<Classification> {
        let (parts, error) = self.parts(sql);
        parts
            .into_iter()
            .map(|p| {
                let error = (p.kind == StatementKind::Unknown)
                    .then(|| error.clone())
                    .flatten();
                self.assemble(vec![p], error)
            })
            .collect()
    }

    /// Parses the whole string at once (the common case); only when that fails, statement by
    /// statement, so one bad statement does not hide what the others touch.
    fn parts(&self, sql: &str) -> (Vec<Part>, Option<String>) {
        let mut tokens = match lex::tokenize(sql) {
            Ok(tokens) => tokens,
            Err(message) => return (vec![unknown()], Some(message)),
        };
        lex::repair(&mut tokens);
        if let Err(message) = lex::check_depth(&tokens).and(lex::check_identifiers(&tokens)) {
            return (vec![unknown()], Some(message));
        }
        let pieces = match parse(tokens) {
            Ok(statements) => return (statements.iter().map(|s| self.part(s)).collect(), None),
            Err(_) => {
                let mut tokens = lex::tokenize(sql).unwrap_or_default();
                lex::repair(&mut tokens);
                lex::split(tokens)
            }
        };
        let mut parts = Vec::with_capacity(pieces.len());
        let mut first_error = None;
        for piece in pieces {
            match parse(piece.clone()) {
                Ok(statements) => parts.extend(statements.iter().map(|s| self.part(s))),
                Err(e) => match fallback::recognise(&piece) {
                    Some(found) => parts.push(Part {
                        kind: found.kind,
                        tables: found.tables,
                    }),
                    None => {
                        first_error.get_or_insert_with(|| e.to_string());
                        parts.push(unknown());
                    }
                },
            }
        }
        (parts, first_error)
    }

    fn part(&self, statement: &Statement) -> Part {
        let facts: Facts = tables::collect(statement, &self.functions);
        Part {
            kind: kind::kind_of(statement, &facts),
            tables: facts.tables,
        }
    }

    fn assemble(&self, parts: Vec<Part>, error: Option<String>) -> Classification {
        let statements: Vec<StatementKind> = parts.iter().map(|p| p.kind).collect();
        // An empty string (only comments) executes nothing anywhere.
        let kind = statements
            .iter()
            .copied()
            .reduce(|a, b| {
                if b.strictness() > a.strictness() {
                    b
                } else {
                    a
                }
            })
            .unwrap_or(StatementKind::Utility);
        let mut tables: Vec<TableRef> = Vec::new();
        let mut joins_allowed = true;
        for part in parts {
            let mut part_schemas = Vec::with_capacity(part.tables.len());
            for (name, role) in part.tables {
                let schema = self.dictionary.lookup(&name);
                part_schemas.push(schema.clone());
                match tables.iter_mut().find(|t| t.name == name) {
                    Some(existing) => existing.role = tables::stronger(existing.role, role),
                    None => tables.push(TableRef { name, role, schema }),
                }
            }
            sort_unique(&mut part_schemas);
            joins_allowed &= self.rules.joins_allowed(&part_schemas);
        }
        let mut schemas: Vec<GitlabSchema> = tables.iter().map(|t| t.schema.clone()).collect();
        sort_unique(&mut schemas);
        Classification {
            kind,
            statements,
            tables,
            cross_join: CrossJoin {
                allowed: joins_allowed,
                schemas: schemas.clone(),
            },
            schemas,
            error,
        }
    }
}

fn parse(tokens: Vec<TokenWithSpan>) -> Result<Vec<Statement>, ParserError> {
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements()
}

fn unknown() -> Part {
    Part {
        kind: StatementKind::Unknown,
        tables: Vec::new(),
    }
}

fn sort_unique(schemas: &mut Vec<GitlabSchema>) {
    schemas.sort();
    schemas.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_quoted_identifier_is_unparsable_as_on_postgres() {
        let c = Classifier::gitlab_default()
            .classify(r#"SELECT 1 AS one FROM "" WHERE "ci_builds"."project_id" = 1013 LIMIT 1"#);
        assert_eq!(c.kind, StatementKind::Unknown);
        assert!(c.tables.is_empty());
        assert!(c
            .error
            .as_deref()
            .is_some_and(|e| e.contains("zero-length")));
    }
    use crate::classify::TxnCommand;

    #[test]
    fn transaction_commands() {
        let classifier = Classifier::gitlab_default();
        let cases = [
            ("BEGIN", TxnCommand::Begin { read_only: false }),
            ("BEGIN READ ONLY", TxnCommand::Begin { read_only: true }),
            (
                "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
                TxnCommand::Begin { read_only: true },
            ),
            (
                "START TRANSACTION READ WRITE",
                TxnCommand::Begin { read_only: false },
            ),
            ("COMMIT", TxnCommand::Commit),
            ("END", TxnCommand::Commit),
            ("ROLLBACK", TxnCommand::Rollback),
            ("ABORT", TxnCommand::Rollback),
            ("SAVEPOINT s1", TxnCommand::Savepoint),
            ("RELEASE SAVEPOINT s1", TxnCommand::Release),
            ("RELEASE s1", TxnCommand::Release),
            ("ROLLBACK TO SAVEPOINT s1", TxnCommand::RollbackTo),
            ("ROLLBACK TO s1", TxnCommand::RollbackTo),
            ("PREPARE TRANSACTION 'gid'", TxnCommand::PrepareTransaction),
            ("COMMIT PREPARED 'gid'", TxnCommand::CommitPrepared),
            ("ROLLBACK PREPARED 'gid'", TxnCommand::RollbackPrepared),
        ];
        for (sql, want) in cases {
            let c = classifier.classify(sql);
            assert_eq!(
                c.kind,
                StatementKind::Transaction(want),
                "{sql}: {:?}",
                c.error
            );
            assert_eq!(c.error, None);
        }
    }

    #[test]
    fn table_roles() {
        use TableRole::{Ddl, Read, Written};
        let classifier = Classifier::gitlab_default();
        let cases: &[(&str, &[(&str, TableRole)])] = &[
            (
                "INSERT INTO tags SELECT * FROM taggings",
                &[("tags", Written), ("taggings", Read)],
            ),
            ("INSERT INTO tags SELECT * FROM tags", &[("tags", Written)]),
            (
                "UPDATE ci_builds SET x = 1 FROM ci_pipelines",
                &[("ci_builds", Written), ("ci_pipelines", Read)],
            ),
            (
                "DELETE FROM ci_builds USING ci_stages",
                &[("ci_builds", Written), ("ci_stages", Read)],
            ),
            ("TRUNCATE ci_builds", &[("ci_builds", Ddl)]),
            ("LOCK TABLE ci_builds", &[("ci_builds", Ddl)]),
            ("COPY ci_builds FROM STDIN", &[("ci_builds", Written)]),
            ("COPY ci_builds TO STDOUT", &[("ci_builds", Read)]),
            ("SELECT * INTO t FROM tags", &[("t", Ddl), ("tags", Read)]),
            ("SELECT * FROM tags FOR UPDATE", &[("tags", Read)]),
            ("SELECT 1 FROM tags; TRUNCATE tags", &[("tags", Ddl)]),
            (
                "WITH d AS (DELETE FROM tags RETURNING *) SELECT * FROM d",
                &[("tags", Written)],
            ),
        ];
        for (sql, want) in cases {
            let classification = classifier.classify(sql);
            let got: Vec<(&str, TableRole)> = classification
                .tables
                .iter()
                .map(|t| (t.name.as_str(), t.role))
                .collect();
            assert_eq!(got, *want, "{sql}");
        }
    }

    #[test]
    fn configured_write_functions() {
        let classifier = Classifier::new(
            Dictionary::gitlab_default(),
            SchemaRules::gitlab_2022(),
            &["Refresh_Counters".to_owned(), "ops.bump".to_owned()],
        );
        assert_eq!(
            classifier.classify("SELECT refresh_counters(1)").kind,
            StatementKind::Write
        );
        assert_eq!(
            classifier.classify("SELECT ops.bump()").kind,
            StatementKind::Write
        );
        // A function the catalog knows as STABLE is a read unless configured as a write.
        let stable = |name: &str| crate::classify::FunctionInfo {
            schema: "public".into(),
            name: name.into(),
            volatility: crate::classify::Volatility::Stable,
        };
        let learned = classifier.learn_functions([stable("bump"), stable("refresh_counters")]);
        assert_eq!(learned.classify("SELECT bump()").kind, StatementKind::Read);
        assert_eq!(
            learned.classify("SELECT refresh_counters(1)").kind,
            StatementKind::Write
        );
        assert_eq!(
            Classifier::gitlab_default()
                .learn_functions([stable("refresh_counters")])
                .classify("SELECT refresh_counters(1)")
                .kind,
            StatementKind::Read
        );
    }

    #[test]
    fn cross_join_is_judged_per_statement() {
        let classifier = Classifier::gitlab_default();
        let split = classifier.classify("SELECT * FROM projects; SELECT * FROM ci_builds");
        assert!(split.cross_join.allowed);
        assert_eq!(split.schemas_label(), "gitlab_ci,gitlab_main");
        let joined = classifier.classify("SELECT * FROM projects, ci_builds");
        assert!(!joined.cross_join.allowed);
    }
}
