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
    let mut out = String::new();
    match normalize(sql, usize::MAX, &mut out) {
        Some(()) => Cow::Owned(out),
        None => Cow::Borrowed(sql),
    }
}

/// The cache key of `sql` when it is at most `limit` bytes long, built in `buf` (the caller
/// keeps it, so a lookup allocates nothing) without holding more than `limit`: a huge
/// statement made of a few huge literals still gets a short key.
pub fn cache_key_within<'a>(sql: &'a str, limit: usize, buf: &'a mut String) -> Option<&'a str> {
    buf.clear();
    match normalize(sql, limit, buf) {
        Some(()) => Some(buf.as_str()),
        // Replacing never lengthens: unchanged text is the key, if it fits.
        None => (sql.len() <= limit).then_some(sql),
    }
}

/// Bytes the scanner must look at: quotes, comment starts, `$` and digits. Everything else is
/// skipped in a tight loop; the scanner runs on every cache lookup.
const INTERESTING: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_digit() || matches!(c, b'\'' | b'"' | b'-' | b'/' | b'$');
        b += 1;
    }
    table
};

/// The first interesting byte at or after `i` (or the end). An 8-byte word is tested for the
/// interesting bytes themselves and skipped whole when it holds none; only a word with one is
/// looked at byte by byte. (The range 0x22..=0x39 they lie in alone would not do: SQL's `.`,
/// `,`, `(`, `)` and `*` lie in it too, and most words of a statement hold one.)
fn next_interesting(bytes: &[u8], mut i: usize) -> usize {
    loop {
        while let Some(word) = bytes
            .get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
        {
            if has_interesting(u64::from_le_bytes(word)) {
                break;
            }
            i += 8;
        }
        let end = bytes.len().min(i + 8);
        while i < end {
            if INTERESTING[bytes[i] as usize] {
                return i;
            }
            i += 1;
        }
        if i == bytes.len() {
            return i;
        }
    }
}

/// Whether a byte of `x` is interesting: `/` and the digits (0x2f..=0x39), `'`, `"`, `$`, `-`.
/// The range they all lie in is tested first: most words of letters and spaces stop there.
fn has_interesting(x: u64) -> bool {
    has_byte_between(x, 0x21, 0x3a)
        && (has_byte_between(x, 0x2e, 0x3a)
            || has_byte(x, b'\'')
            || has_byte(x, b'"')
            || has_byte(x, b'$')
            || has_byte(x, b'-'))
}

/// Whether a byte of `x` equals `c` (below 0x80). The borrow of `v - ONES` can mark a lane
/// above a zero lane wrongly, but only when some lane is zero, so the answer is exact.
fn has_byte(x: u64, c: u8) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    let v = x ^ (ONES * u64::from(c));
    v.wrapping_sub(ONES) & !v & (ONES * 0x80) != 0
}

/// Whether a byte of `x` lies strictly between `low` and `high` (both below 0x80; bytes with the
/// high bit set never count). Each byte's lane stays within its 8 bits, so lanes do not mix.
fn has_byte_between(x: u64, low: u8, high: u8) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    let low7 = x & (ONES * 0x7f);
    let below_high = (ONES * (0x7f + u64::from(high))).wrapping_sub(low7);
    let above_low = low7.wrapping_add(ONES * (0x7f - u64::from(low)));
    below_high & !x & above_low & (ONES * 0x80) != 0
}

/// Identifier bytes (PostgreSQL allows `$` inside identifiers and any non-ASCII byte).
fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Writes the text with literals replaced into the empty `out`; `None` when there is nothing to
/// replace, the text must stay as it is, or the result would pass `limit` bytes (`out` then
/// holds nothing meaningful). Only ASCII bytes are cut at, so every slice is valid UTF-8.
fn normalize(sql: &str, limit: usize, out: &mut String) -> Option<()> {
    let bytes = sql.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    loop {
        i = next_interesting(bytes, i);
        let Some(&b) = bytes.get(i) else { break };
        let after_ident = i > 0 && is_ident(bytes[i - 1]);
        match b {
            // A digit or `$` right after an identifier byte belongs to that identifier (`t1`, `a$b`).
            b'0'..=b'9' | b'$' if after_ident => {
                while i < bytes.len() && is_ident(bytes[i]) {
                    i += 1;
                }
            }
            b'0'..=b'9' => {
                let end = number_end(bytes, i)?;
                replace(out, sql, &mut copied, (i, end), "0", limit)?;
                i = end;
            }
            b'\'' => {
                // E'..', B'..', X'..', U&'..' have their own escape rules: leave them alone.
                if after_ident || (i > 0 && bytes[i - 1] == b'&') {
                    return None;
                }
                let end = quoted_end(bytes, i, b'\'')?;
                if bytes[i..end].contains(&b'\\') {
                    return None;
                }
                replace(out, sql, &mut copied, (i, end), "''", limit)?;
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
            _ => i += 1,
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&sql[copied..]);
    (out.len() <= limit).then_some(())
}

/// Copies up to `span` and its replacement; `None` once the key passes `limit`.
fn replace(
    out: &mut String,
    sql: &str,
    copied: &mut usize,
    (start, end): (usize, usize),
    with: &str,
    limit: usize,
) -> Option<()> {
    if out.is_empty() {
        out.reserve(sql.len().min(limit));
    }
    out.push_str(&sql[*copied..start]);
    out.push_str(with);
    *copied = end;
    (out.len() <= limit).then_some(())
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
            _ => {
                i += 1;
                while i < bytes.len() && !matches!(bytes[i], b'*' | b'/') {
                    i += 1;
                }
            }
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
    use super::{cache_key, cache_key_within, next_interesting, INTERESTING};

    /// The word scan from `start` against a byte-by-byte scan of the table.
    fn scans_agree(bytes: &[u8], start: usize) -> Result<(), proptest::test_runner::TestCaseError> {
        let start = start.min(bytes.len());
        let naive = (start..bytes.len())
            .find(|&i| INTERESTING[bytes[i] as usize])
            .unwrap_or(bytes.len());
        proptest::prop_assert_eq!(next_interesting(bytes, start), naive);
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn the_word_scan_finds_what_the_byte_scan_finds(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            start in 0usize..40,
        ) {
            scans_agree(&bytes, start)?;
        }

        /// Bytes drawn from SQL's punctuation and the range edges, as real statements are.
        #[test]
        fn the_word_scan_finds_what_the_byte_scan_finds_in_sql(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"aZ_ .,()*;:=+<>[]'\"$-/09\n\x80\xff\x2e\x2f\x3a".to_vec()),
                0..64,
            ),
            start in 0usize..64,
        ) {
            scans_agree(&bytes, start)?;
        }
    }

    #[test]
    fn every_byte_in_every_lane_is_told_apart() {
        for lane in 0..8 {
            for b in 0..=255u8 {
                let mut word = [b'a'; 8];
                word[lane] = b;
                let got = super::has_interesting(u64::from_le_bytes(word));
                assert_eq!(got, INTERESTING[b as usize], "byte {b:#x} in lane {lane}");
            }
        }
    }

    #[test]
    fn bounded_keys_stop_at_the_limit() {
        let long = format!("SELECT '{}' FROM t", "x".repeat(1000));
        let mut buf = String::from("left over from an earlier key");
        assert_eq!(
            cache_key_within(&long, 20, &mut buf),
            Some("SELECT '' FROM t")
        );
        assert_eq!(cache_key_within("SELECT 1, 2, 3", 8, &mut buf), None);
        assert_eq!(cache_key_within("SELECT a", 8, &mut buf), Some("SELECT a"));
        assert_eq!(cache_key_within("SELECT abc", 8, &mut buf), None);
        assert_eq!(cache_key_within("SELECT 7", 8, &mut buf), Some("SELECT 0"));
    }

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
