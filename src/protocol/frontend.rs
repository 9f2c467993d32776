//! Zero-copy views over the client messages routing needs (Query, Parse, Bind, Describe,
//! Close) and builders for the ones the proxy injects when it re-prepares statements.

use bytes::{BufMut, BytesMut};

use super::frame::{read_cstr, Frame};

/// The SQL text of a Query message.
pub fn query_sql(f: &Frame) -> Option<&str> {
    let mut b = f.body();
    read_cstr(&mut b).and_then(|s| std::str::from_utf8(s).ok())
}

/// Whether a query's `text` may begin with one of `verbs` (lowercase letters), told from its
/// bytes alone: every simple query passes such checks, and most are ruled out here before
/// their text is validated or split into words. The verb is the run of ASCII letters after
/// ASCII whitespace; a word split at any whitespace begins with that run, so a different run
/// rules the verb out. No run (a non-ASCII byte or another character first) rules nothing out.
#[inline]
pub fn may_start_with(text: &[u8], verbs: &[&str]) -> bool {
    let start = text.iter().position(|b| !b.is_ascii_whitespace());
    let rest = &text[start.unwrap_or(text.len())..];
    if !rest.first().is_some_and(u8::is_ascii_alphabetic) {
        return true;
    }
    // The run is `v` when no letter follows `v`'s length and it starts with `v`. The byte after
    // is looked at first: it rules out most texts (SELECT, INSERT, ...) with no compare.
    verbs.iter().any(|v| {
        !rest.get(v.len()).is_some_and(u8::is_ascii_alphabetic)
            && rest
                .get(..v.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(v.as_bytes()))
    })
}

/// A Parse message: statement name, SQL text and the raw parameter-type section.
pub struct ParseView<'a> {
    pub name: &'a [u8],
    pub sql: &'a str,
    pub param_types: &'a [u8],
}

pub fn parse_view(f: &Frame) -> Option<ParseView<'_>> {
    let mut b = f.body();
    let name = read_cstr(&mut b)?;
    let sql = std::str::from_utf8(read_cstr(&mut b)?).ok()?;
    Some(ParseView {
        name,
        sql,
        param_types: b,
    })
}

/// Statement name a Bind message refers to, with the byte range of the portal+name prefix.
pub fn bind_statement(f: &Frame) -> Option<&[u8]> {
    let mut b = f.body();
    read_cstr(&mut b)?;
    read_cstr(&mut b)
}

/// `(kind, name)` of a Describe or Close message; kind is `b'S'` or `b'P'`.
pub fn target_of(f: &Frame) -> Option<(u8, &[u8])> {
    let (&kind, mut rest) = f.body().split_first()?;
    let name = read_cstr(&mut rest)?;
    Some((kind, name))
}

fn finish(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Writes a Parse for `name` with the original SQL and parameter types.
pub fn write_parse(name: &str, sql: &str, param_types: &[u8], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(b'P');
    out.put_i32(0);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
    out.put_slice(param_types);
    finish(out, start);
}

/// Writes a Bind identical to `f` but naming server statement `name`.
pub fn write_bind_renamed(f: &Frame, name: &str, out: &mut BytesMut) -> Option<()> {
    let rest = write_bind_head(f, name, out)?;
    out.put_slice(&f.raw[rest..]);
    Some(())
}

/// Writes the head of that renamed Bind (its header, portal and `name`) and returns where the
/// rest of `f` (formats and parameters, unchanged) starts, so a long Bind's parameters can be
/// sent from the client's buffer instead of copied.
pub fn write_bind_head(f: &Frame, name: &str, out: &mut BytesMut) -> Option<usize> {
    let mut b = f.body();
    let portal = read_cstr(&mut b)?;
    read_cstr(&mut b)?;
    let len = i32::try_from(4 + portal.len() + 1 + name.len() + 1 + b.len()).ok()?;
    out.put_u8(b'B');
    out.put_i32(len);
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    Some(f.raw.len() - b.len())
}

/// Writes a Describe or Close (`tag`) of kind `kind` for `name`.
pub fn write_target(tag: u8, kind: u8, name: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    out.put_u8(kind);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    finish(out, start);
}

/// Writes a Bind of statement `name` to the unnamed portal, without parameters.
pub fn write_bind_of(name: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(b'B');
    out.put_i32(0);
    out.put_u8(0);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(&[0, 0, 0, 0, 0, 0]);
    finish(out, start);
}

/// Writes an Execute of the unnamed portal with no row limit.
pub fn write_execute_unnamed(out: &mut BytesMut) {
    out.put_u8(b'E');
    out.put_i32(4 + 1 + 4);
    out.put_slice(&[0, 0, 0, 0, 0]);
}

/// Writes a simple Query message.
pub fn write_query(sql: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(b'Q');
    out.put_i32(0);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
    finish(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::decode_frame;

    #[test]
    fn parse_and_bind_rename() {
        let mut out = BytesMut::new();
        write_parse("s1", "select $1", &[0, 1, 0, 0, 0, 23], &mut out);
        let f = decode_frame(&mut out, 1 << 20).unwrap().unwrap();
        let p = parse_view(&f).unwrap();
        assert_eq!((p.name, p.sql), (&b"s1"[..], "select $1"));
        assert_eq!(p.param_types, &[0, 1, 0, 0, 0, 23]);

        let mut bind = BytesMut::new();
        bind.put_u8(b'B');
        bind.put_i32(4 + 11);
        bind.put_slice(b"p\0s1\0\0\0\0\0\0\0");
        let f = decode_frame(&mut bind, 1 << 20).unwrap().unwrap();
        assert_eq!(bind_statement(&f), Some(&b"s1"[..]));
        let mut out = BytesMut::new();
        write_bind_renamed(&f, "pgdecomp_7", &mut out).unwrap();
        let g = decode_frame(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(bind_statement(&g), Some(&b"pgdecomp_7"[..]));
        assert_eq!(&g.body()[g.body().len() - 6..], &[0, 0, 0, 0, 0, 0]);
    }
}
