//! Classify step (client → framing → **classify** → route → pool → server): the pure
//! `Classifier::classify` that turns one query string into a `Classification`.

use std::sync::Arc;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::TokenWithSpan;

use super::tables::{self, Facts};
use super::{
    kind, lex, Classification, CrossJoin, Dictionary, GitlabSchema, SchemaRules, StatementKind,
    TableRef, TableRole,
};

/// Deeper nesting than this is an error, not a stack overflow. GitLab's deepest generated
/// queries stay far below it; pg_query fails similarly on absurd depth.
const RECURSION_LIMIT: usize = 100;

/// Immutable classification context built from config; cheap to share.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub dictionary: Arc<Dictionary>,
    pub rules: Arc<SchemaRules>,
    /// Lowercase names of configured functions that make a read a write (besides nextval,
    /// setval and the advisory-lock family, which are always writes).
    pub write_functions: Arc<[String]>,
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
        let write_functions: Vec<String> = extra_write_functions
            .iter()
            .map(|f| f.trim().to_lowercase())
            .collect();
        Self {
            dictionary: Arc::new(dictionary),
            rules: Arc::new(rules),
            write_functions: write_functions.into(),
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

    /// Classifies one query string (possibly several statements). Never panics.
    pub fn classify(&self, sql: &str) -> Classification {
        let (parts, error) = self.parts(sql);
        self.assemble(parts, error)
    }

    /// Parses the whole string at once (the common case); only when that fails, statement by
    /// statement, so one bad statement does not hide what the others touch.
    fn parts(&self, sql: &str) -> (Vec<Part>, Option<String>) {
        let mut tokens = match lex::tokenize(sql) {
            Ok(tokens) => tokens,
            Err(message) => return (vec![unknown()], Some(message)),
        };
        lex::repair(&mut tokens);
        if let Err(message) = lex::check_depth(&tokens) {
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
                Err(e) => match lex::recognise(&piece) {
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
        let facts: Facts = tables::collect(statement, &self.write_functions);
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
                    Some(existing) if role_rank(role) > role_rank(existing.role) => {
                        existing.role = role
                    }
                    Some(_) => {}
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

fn role_rank(role: TableRole) -> u8 {
    match role {
        TableRole::Read => 0,
        TableRole::Written => 1,
        TableRole::Ddl => 2,
    }
}

fn sort_unique(schemas: &mut Vec<GitlabSchema>) {
    schemas.sort();
    schemas.dedup();
}
