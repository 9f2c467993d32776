//! Classify step (client → framing → **classify** → route → pool → server): the cache key.
//! Simple-protocol clients inline their parameters (`WHERE id = 42`), so the same statement
//! arrives with ever-changing literals; replacing each literal with a canonical one lets them
//! share one cache entry.
//!
//! Correctness argument: two strings with the same key have the same tokens except for literal
//! values, and nothing `classify` reports depends on a literal value (parse errors aside, which
//! the cache does not share). Anything this scanner cannot lex exactly like PostgreSQL
//! (backslashes or prefixes on strings, dollar quotes, odd numbers, unterminated quotes)
//! makes it return the text unchanged, which is always correct.

use std::borrow::Cow;

/// The cache key of `sql`: string literals become `''` and numbers `0`; comments, identifiers
/// and `$n` parameters stay. Borrowed when nothing was replaced or the text is not safe to touch.
pub fn cache_key(sql: &str) -> Cow<'_, str> {
    normalize(sql.as_bytes()).map_or(Cow::Borrowed(sql), Cow::Owned)
}

/// Literal spans to replace, or `None` when the text must stay as it is.
fn normalize(bytes: &[u8]) -> Option<String> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    let replace =
        |out: &mut Option<String>, copied: &mut usize, start: usize, end: usize, with: &str| {
            let text = out.get_or_insert_with(|| String::with_capacity(bytes.len()));
            text.push_str(std::str::from_utf8(&bytes[*copied..start]).ok()?);
            text.push_str(with);
            *copied = end;
            Some(())
        };
    while i < bytes.len() {
        let b = bytes[i];
        let prev = if i > 0 { bytes[i - 1] } else { b' ' };
        match b {
            b'\'' => {
                // E'..', B'..', X'..', U&'..' have their own escape rules: leave them alone.
                if is_ident(prev) || prev == b'&' {
                    return None;
                }
                let end = quoted_end(bytes, i, b'\'')?;
                if bytes[i..end].contains(&b'\\') {
                    return None;
                }
                replace(&mut out, &mut copied, i, end, "''")?;
                i = end;
            }
            b'"' => i = quoted_end(bytes, i, b'"')?,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(bytes.len(), |p| i + p);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = comment_end(bytes, i)?,
            b'$' => {
                // `$1` is a parameter; anything else starting with `$` is a dollar quote.
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                if digits == 0 {
                    return None;
                }
                i += 1 + digits;
            }
            b'0'..=b'9' => {
                let end = number_end(bytes, i)?;
                replace(&mut out, &mut copied, i, end, "0")?;
                i = end;
            }
            _ if is_ident(b) => i += bytes[i..].iter().take_while(|&&c| is_ident(c)).count(),
            _ => i += 1,
        }
    }
    let mut text = out?;
    text.push_str(std::str::from_utf8(&bytes[copied..]).ok()?);
    Some(text)
}

/// Identifier bytes (PostgreSQL allows `$` inside identifiers and any non-ASCII letter).
fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// End (exclusive) of a quoted token starting at `start`, with doubled quotes as escapes.
fn quoted_end(bytes: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let at = i + bytes.get(i..)?.iter().position(|&c| c == quote)?;
        if bytes.get(at + 1) == Some(&quote) {
            i = at + 2;
        } else {
            return Some(at + 1);
        }
    }
}

/// End (exclusive) of a nested `/* ... */` comment.
fn comment_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// End of `digits[.digits][e[+-]digits]`; `None` for anything PostgreSQL lexes differently
/// (`0x1f`, `1_000`, `1.2.3`, `1e`, trailing letters).
fn number_end(bytes: &[u8], start: usize) -> Option<usize> {
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut i = start + digits(start);
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1) != Some(&b'.') {
        i += 1 + digits(i + 1);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(i + 1), Some(b'+' | b'-')));
        let exponent = digits(i + 1 + sign);
        if exponent == 0 {
            return None;
        }
        i += 1 + sign + exponent;
    }
    match bytes.get(i) {
        Some(&c) if is_ident(c) || c == b'.' => None,
        _ => Some(i),
    }
}

#[cfg(test)]
mod tests {
    use super::cache_key;

    #[test]
    fn literals_become_placeholders() {
        let cases = [
            (
                "SELECT * FROM t WHERE id = 42 AND name = 'x''y'",
                "SELECT * FROM t WHERE id = 0 AND name = ''",
            ),
            (
                "UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 1.5e3;",
                "UPDATE pgbench_accounts SET abalance = abalance + -0 WHERE aid = 0;",
            ),
            (
                "SELECT \"t1\".* FROM t1 WHERE a = $1 /*line:12*/ -- 7",
                "SELECT \"t1\".* FROM t1 WHERE a = $1 /*line:12*/ -- 7",
            ),
            ("SELECT a[1:2], 1::int", "SELECT a[0:0], 0::int"),
            ("SELECT .5", "SELECT .0"),
        ];
        for (sql, want) in cases {
            assert_eq!(cache_key(sql), want, "{sql}");
        }
    }

    #[test]
    fn unsafe_text_is_left_alone() {
        for sql in [
            "SELECT E'a\\'b' FROM t",
            "SELECT 'a\\' FROM t",
            "SELECT $$x$$",
            "SELECT 0x1f",
            "SELECT 1_000",
            "SELECT 1e",
            "SELECT 1FROM t",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT /* unterminated",
            "SELECT x'ff'",
            "SELECT U&'d' FROM t",
        ] {
            assert_eq!(cache_key(sql), sql, "{sql}");
        }
    }
}
