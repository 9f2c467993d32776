//! Classify step (client → framing → **classify** → route → pool → server): tokens before the
//! parser. Rewrites the few PostgreSQL spellings sqlparser does not parse into equivalent ones,
//! rejects token streams too deep to handle, and splits strings into statements when the whole
//! string fails.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

/// Tokenizes with the PostgreSQL dialect; the error is the tokenizer's message.
pub(super) fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, String> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| e.to_string())
}

/// Rewrites, without changing what the statement touches, the PostgreSQL spellings sqlparser
/// 0.63 gets wrong or rejects:
/// - `FOR NO KEY UPDATE` → `FOR UPDATE`, `FOR KEY SHARE` → `FOR SHARE` (all locking reads to us);
/// - a leading `TABLE t` → `SELECT * FROM t`;
/// - `FROM ONLY t` / `JOIN ONLY t` / `UPDATE ONLY t` → `t` (sqlparser would read a table `only`
///   aliased `t`; ONLY just leaves out child partitions);
/// - `ON CONFLICT (cols) WHERE pred DO` → `ON CONFLICT (cols) DO` (a partial-index target).
pub(super) fn repair(tokens: &mut Vec<TokenWithSpan>) {
    let mut at_statement_start = true;
    // The previous significant token when it was an unquoted keyword or a comma.
    let mut prev: Option<Keyword> = None;
    let mut i = 0;
    while i < tokens.len() {
        let mut current = None;
        match &tokens[i].token {
            Token::Whitespace(_) => {
                i += 1;
                continue;
            }
            Token::SemiColon => at_statement_start = true,
            Token::Word(w) if w.quote_style.is_some() => at_statement_start = false,
            Token::Word(w) if at_statement_start && w.keyword == Keyword::TABLE => {
                let span = tokens[i].span;
                tokens[i] = TokenWithSpan::new(Token::make_keyword("SELECT"), span);
                let star = TokenWithSpan::new(Token::Mul, span);
                let from = TokenWithSpan::new(Token::make_keyword("FROM"), span);
                tokens.splice(i + 1..i + 1, [space(span), star, space(span), from]);
                at_statement_start = false;
                current = Some(Keyword::FROM);
                i += 4;
            }
            Token::Word(w) => {
                at_statement_start = false;
                current = Some(w.keyword);
                match w.keyword {
                    Keyword::FOR => repair_lock_strength(tokens, i),
                    Keyword::ONLY
                        if matches!(
                            prev,
                            Some(Keyword::FROM | Keyword::JOIN | Keyword::UPDATE | Keyword::USING)
                        ) =>
                    {
                        blank(tokens, i);
                        current = prev;
                    }
                    Keyword::CONFLICT if prev == Some(Keyword::ON) => {
                        drop_conflict_predicate(tokens, i)
                    }
                    _ => {}
                }
            }
            _ => at_statement_start = false,
        }
        prev = current;
        i += 1;
    }
}

fn space(span: sqlparser::tokenizer::Span) -> TokenWithSpan {
    TokenWithSpan::new(Token::Whitespace(Whitespace::Space), span)
}

fn blank(tokens: &mut [TokenWithSpan], j: usize) {
    tokens[j].token = Token::Whitespace(Whitespace::Space);
}

fn repair_lock_strength(tokens: &mut [TokenWithSpan], for_index: usize) {
    match significant(tokens, for_index + 1, 3).as_slice() {
        [(a, Keyword::NO), (b, Keyword::KEY), (_, Keyword::UPDATE)] => {
            let (a, b) = (*a, *b);
            blank(tokens, a);
            blank(tokens, b);
        }
        [(a, Keyword::KEY), (_, Keyword::SHARE), ..] => {
            let a = *a;
            blank(tokens, a);
        }
        _ => {}
    }
}

/// Blanks `WHERE pred` in `ON CONFLICT (cols) WHERE pred DO ...`; the predicate only picks the
/// arbiter index and names no tables.
fn drop_conflict_predicate(tokens: &mut [TokenWithSpan], conflict: usize) {
    let next_significant = |from: usize| {
        (from..tokens.len()).find(|&j| !matches!(tokens[j].token, Token::Whitespace(_)))
    };
    let Some(open) = next_significant(conflict + 1).filter(|&j| tokens[j].token == Token::LParen)
    else {
        return;
    };
    let mut depth = 0usize;
    let mut close = None;
    for (j, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    close = Some(j);
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(where_at) = close.and_then(|c| next_significant(c + 1)) else {
        return;
    };
    if !matches!(&tokens[where_at].token, Token::Word(w) if w.quote_style.is_none() && w.keyword == Keyword::WHERE)
    {
        return;
    }
    let mut depth = 0usize;
    for j in where_at + 1..tokens.len() {
        match &tokens[j].token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::SemiColon => return,
            Token::Word(w) if depth == 0 && w.quote_style.is_none() && w.keyword == Keyword::DO => {
                (where_at..j).for_each(|k| blank(tokens, k));
                return;
            }
            _ => {}
        }
    }
}

/// Up to `n` next non-whitespace tokens from `start` that are words: (index, keyword).
fn significant(tokens: &[TokenWithSpan], start: usize, n: usize) -> Vec<(usize, Keyword)> {
    tokens
        .iter()
        .enumerate()
        .skip(start)
        .filter(|(_, t)| !matches!(t.token, Token::Whitespace(_)))
        .take(n)
        .map_while(|(j, t)| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => Some((j, w.keyword)),
            _ => None,
        })
        .collect()
}

/// PostgreSQL refuses `""` ("zero-length delimited identifier"); sqlparser accepts it as a
/// table with an empty name. Refusing it here keeps the statement unparsable, as on the server.
pub(super) fn check_identifiers(tokens: &[TokenWithSpan]) -> Result<(), String> {
    let empty = tokens.iter().any(
        |t| matches!(&t.token, Token::Word(w) if w.quote_style == Some('"') && w.value.is_empty()),
    );
    if empty {
        return Err("zero-length delimited identifier".into());
    }
    Ok(())
}

/// Longest run of operators (or of UNION/EXCEPT/INTERSECT) allowed at one parenthesis level.
/// sqlparser builds such runs as left-deep trees without touching its recursion limit, and
/// dropping a tree tens of thousands of levels deep overflows the stack. A run this long is
/// not something an application writes by hand; it is rejected like too-deep nesting.
pub(super) const MAX_OPERATOR_RUN: usize = 2000;

/// Rejects token streams whose parse tree would be too deep to drop safely (see
/// [`MAX_OPERATOR_RUN`]). Commas end an operator run; only `;` ends a set-operation run.
pub(super) fn check_depth(tokens: &[TokenWithSpan]) -> Result<(), String> {
    // (operators, set operations) per open parenthesis level.
    let mut levels: Vec<(usize, usize)> = vec![(0, 0)];
    for t in tokens {
        let level = levels.len() - 1;
        match &t.token {
            Token::LParen | Token::LBracket => levels.push((0, 0)),
            Token::RParen | Token::RBracket if level > 0 => {
                levels.pop();
            }
            Token::Comma => levels[level].0 = 0,
            Token::SemiColon => levels[level] = (0, 0),
            Token::Word(w) if w.quote_style.is_none() => match w.keyword {
                Keyword::AND
                | Keyword::OR
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::COLLATE => levels[level].0 += 1,
                Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT => levels[level].1 += 1,
                _ => {}
            },
            token if is_operator(token) => levels[level].0 += 1,
            _ => {}
        }
        let (operators, set_operations) = levels[levels.len() - 1];
        if operators > MAX_OPERATOR_RUN || set_operations > MAX_OPERATOR_RUN {
            return Err(format!(
                "statement too deep: more than {MAX_OPERATOR_RUN} operators in a row"
            ));
        }
    }
    Ok(())
}

fn is_operator(token: &Token) -> bool {
    !matches!(
        token,
        Token::Word(_)
            | Token::Number(..)
            | Token::Whitespace(_)
            | Token::Comma
            | Token::Period
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::LParen
            | Token::RParen
            | Token::LBracket
            | Token::RBracket
            | Token::SemiColon
            | Token::EOF
    )
}

/// Splits a token stream into statements at top-level semicolons, dropping empty ones.
pub(super) fn split(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut pieces = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        match token.token {
            Token::SemiColon | Token::EOF => pieces.push(std::mem::take(&mut current)),
            _ => current.push(token),
        }
    }
    pieces.push(current);
    pieces.retain(|piece| {
        piece
            .iter()
            .any(|t| !matches!(t.token, Token::Whitespace(_)))
    });
    pieces
}

/// PostgreSQL folds unquoted identifiers to lower case and keeps quoted ones exactly.
pub(super) fn ident_text(value: &str, quote_style: Option<char>) -> String {
    match quote_style {
        Some(_) => value.to_owned(),
        None => value.to_lowercase(),
    }
}
