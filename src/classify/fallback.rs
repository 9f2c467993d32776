//! Classify step (client → framing → **classify** → route → pool → server): recognises by
//! leading keywords the PostgreSQL commands sqlparser 0.63 has no grammar for, so they get a
//! real kind (and their tables) instead of `unknown`.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::lex::ident_text;
use super::{StatementKind, TableRole, TxnCommand};

/// What the keyword fallback recognised.
pub(super) struct Recognised {
    pub kind: StatementKind,
    pub tables: Vec<(String, TableRole)>,
}

/// Classifies by leading keywords the PostgreSQL commands sqlparser 0.63 cannot parse.
/// `None` leaves the statement unknown.
pub(super) fn recognise(tokens: &[TokenWithSpan]) -> Option<Recognised> {
    let words: Vec<&TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let word = |i: usize| match words.get(i).map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => String::new(),
    };
    let txn = |command| {
        Some(Recognised {
            kind: StatementKind::Transaction(command),
            tables: vec![],
        })
    };
    let ddl = |tables| {
        Some(Recognised {
            kind: StatementKind::Ddl,
            tables,
        })
    };
    match (word(0).as_str(), word(1).as_str(), word(2).as_str()) {
        ("PREPARE", "TRANSACTION", _) => txn(TxnCommand::PrepareTransaction),
        ("COMMIT", "PREPARED", _) => txn(TxnCommand::CommitPrepared),
        ("ROLLBACK", "PREPARED", _) => txn(TxnCommand::RollbackPrepared),
        ("REFRESH", "MATERIALIZED", "VIEW") => {
            let start = if word(3) == "CONCURRENTLY" { 4 } else { 3 };
            ddl(names(&words[start.min(words.len())..], TableRole::Ddl))
        }
        ("VACUUM", _, _) => ddl(names(vacuum_targets(&words), TableRole::Ddl)),
        ("ALTER", "TABLE", _) => ddl(alter_table_targets(&words)),
        ("CHECKPOINT", "", _) => Some(Recognised {
            kind: StatementKind::Utility,
            tables: vec![],
        }),
        // pg_query reports no tables for these; they still need the primary.
        ("DROP", "INDEX", _) | ("REINDEX", _, _) | ("CLUSTER", _, _) => ddl(vec![]),
        _ => None,
    }
}

/// The altered table, and the partition of `ATTACH/DETACH PARTITION p` (sqlparser 0.63 parses
/// neither form): `ALTER TABLE [IF EXISTS] [ONLY] t ...`.
fn alter_table_targets(words: &[&TokenWithSpan]) -> Vec<(String, TableRole)> {
    let upper = |i: usize| match words.get(i).map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => String::new(),
    };
    let mut i = 2;
    if upper(i) == "IF" && upper(i + 1) == "EXISTS" {
        i += 2;
    }
    if upper(i) == "ONLY" {
        i += 1;
    }
    let mut targets = name_at(words, i).into_iter().collect::<Vec<_>>();
    if let Some(p) = (i..words.len())
        .find(|&j| matches!(upper(j).as_str(), "ATTACH" | "DETACH") && upper(j + 1) == "PARTITION")
    {
        targets.extend(name_at(words, p + 2));
    }
    targets
}

/// The dotted object name starting at `start`, if any.
fn name_at(words: &[&TokenWithSpan], start: usize) -> Option<(String, TableRole)> {
    let mut name = String::new();
    let mut j = start;
    while let Some(Token::Word(w)) = words.get(j).map(|t| &t.token) {
        name.push_str(&ident_text(&w.value, w.quote_style));
        if words.get(j + 1).map(|t| &t.token) != Some(&Token::Period) {
            break;
        }
        name.push('.');
        j += 2;
    }
    (!name.is_empty()).then_some((name, TableRole::Ddl))
}

/// The table list of `VACUUM [FULL|FREEZE|VERBOSE|ANALYZE ...| (options)] t [(cols)], ...`.
fn vacuum_targets<'t>(words: &'t [&'t TokenWithSpan]) -> &'t [&'t TokenWithSpan] {
    let mut i = 1;
    while let Some(t) = words.get(i) {
        match &t.token {
            Token::LParen if i == 1 => {
                while words.get(i).is_some_and(|t| t.token != Token::RParen) {
                    i += 1;
                }
            }
            Token::Word(w)
                if w.quote_style.is_none()
                    && matches!(
                        w.keyword,
                        Keyword::FULL | Keyword::FREEZE | Keyword::VERBOSE | Keyword::ANALYZE
                    ) => {}
            _ => break,
        }
        i += 1;
    }
    &words[i.min(words.len())..]
}

/// Comma-separated object names (`a.b, "C"`), skipping parenthesised column lists.
fn names(words: &[&TokenWithSpan], role: TableRole) -> Vec<(String, TableRole)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for t in words {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            Token::Word(w) => current.push_str(&ident_text(&w.value, w.quote_style)),
            Token::Period => current.push('.'),
            Token::Comma => out.push((std::mem::take(&mut current), role)),
            _ => {}
        }
    }
    out.push((current, role));
    out.retain(|(name, _)| !name.is_empty());
    out
}
