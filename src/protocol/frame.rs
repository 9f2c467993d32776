//! Framing of tagged messages (`tag:u8, len:i32, body`). Pure: callers own the buffers and the
//! sockets. `Ok(None)` means "need more bytes", as in mini-redis and postgres-protocol.

use bytes::{Buf, Bytes, BytesMut};

/// A complete tagged message. `raw` holds the whole message, header included, so forwarding
/// needs no re-encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

impl Frame {
    /// The body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// Framing errors; each one ends the connection that sent it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type '{tag}'", tag = *.tag as char)]
    BadLength { tag: u8, len: i32 },
    #[error("message type '{tag}' declares {len} bytes, more than the {max} byte limit", tag = *.tag as char)]
    TooLong { tag: u8, len: usize, max: usize },
}

/// Reads the header at the start of `buf` without consuming anything: `(tag, total_len)` where
/// `total_len` includes the tag byte.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength { tag, len });
    }
    let len = len as usize;
    if len > max_len {
        return Err(FrameError::TooLong {
            tag,
            len,
            max: max_len,
        });
    }
    Ok(Some((tag, len + 1)))
}

/// Bytes reserved at once for the rest of a partly received message.
const READ_AHEAD: usize = 64 * 1024;

/// Splits one complete frame off the front of `buf`, reserving space for more of a partially
/// received one (at most as much again as has arrived).
pub fn decode_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    match peek_header(buf, max_len)? {
        None => Ok(None),
        Some((tag, total)) if buf.len() >= total => {
            let raw = buf.split_to(total).freeze();
            Ok(Some(Frame { tag, raw }))
        }
        Some((_, total)) => {
            // Room for what has arrived again, not for what the header claims: a header alone
            // must not commit max_len bytes (a long message grows its buffer by doubling).
            let ahead = buf.len().max(READ_AHEAD);
            buf.reserve((total - buf.len()).min(ahead));
            Ok(None)
        }
    }
}

/// Reads a NUL-terminated string from the front of `buf`, advancing past the NUL.
pub fn read_cstr<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    // Every statement's text passes here, more than once: memchr scans a word at a time. Names
    // are mostly empty (the unnamed statement and portal), found without the call.
    let pos = match buf.first() {
        Some(0) => 0,
        _ => memchr::memchr(0, buf)?,
    };
    let s = &buf[..pos];
    buf.advance(pos + 1);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_more_then_completes() {
        let mut b = BytesMut::from(&b"Q\0\0\0\x09SEL"[..]);
        assert_eq!(decode_frame(&mut b, 1024).unwrap(), None);
        b.extend_from_slice(b"1\0");
        let f = decode_frame(&mut b, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"SEL1\0");
        assert!(b.is_empty());
    }

    #[test]
    fn rejects_bad_and_huge_lengths() {
        let mut b = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        assert!(matches!(
            decode_frame(&mut b, 1024),
            Err(FrameError::BadLength { .. })
        ));
        let mut b = BytesMut::from(&b"Q\x40\0\0\0"[..]);
        assert!(matches!(
            decode_frame(&mut b, 1024),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn a_header_alone_reserves_little() {
        let mut b = BytesMut::from(&b"Q\x0f\0\0\0"[..]);
        assert_eq!(decode_frame(&mut b, usize::MAX).unwrap(), None);
        assert!(b.capacity() < 1 << 20, "{}", b.capacity());
    }

    #[test]
    fn cstr() {
        let mut s: &[u8] = b"abc\0def\0";
        assert_eq!(read_cstr(&mut s), Some(&b"abc"[..]));
        assert_eq!(read_cstr(&mut s), Some(&b"def"[..]));
        assert_eq!(read_cstr(&mut s), None);
    }
}
