//! Relay → server: the bytes waiting to be written to the attached server. At most one long
//! client message waits as a slice of the client's own read buffer instead of a copy, so a
//! 200 MiB Query costs 200 MiB once.

use bytes::{Buf, Bytes, BytesMut};

use super::machine::splice;

pub struct Outbox {
    /// What the session machine wrote (renamed, injected and short messages).
    pub buf: BytesMut,
    /// A long client message, sent after the first `before` bytes of `buf`.
    long: Option<Bytes>,
    before: usize,
}

impl Outbox {
    pub fn new(buf: BytesMut) -> Self {
        Self {
            buf,
            long: None,
            before: 0,
        }
    }

    /// Gives the buffer back for the next attachment; a buffer grown past `keep` is replaced,
    /// so one large batch does not stay allocated for the life of the client.
    pub fn into_buf(self, keep: usize) -> BytesMut {
        match self.buf.capacity() > keep {
            true => BytesMut::new(),
            false => self.buf,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len() + self.long.as_ref().map_or(0, Bytes::len)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.long.is_none()
    }

    /// Takes a message the machine left (`Session::take_deferred`): it goes after the first
    /// `at` bytes of `buf`. A second one while the first waits is copied in its place.
    pub fn defer(&mut self, (at, raw): (usize, Bytes)) {
        match self.long {
            Some(_) => splice(&mut self.buf, (at, raw)),
            None => {
                self.before = at;
                self.long = Some(raw);
            }
        }
    }

    /// The bytes to write next.
    pub fn chunk(&self) -> &[u8] {
        match &self.long {
            Some(long) if self.before == 0 => long,
            Some(_) => &self.buf[..self.before],
            None => &self.buf,
        }
    }

    /// `n` bytes of `chunk()` were written.
    pub fn advance(&mut self, n: usize) {
        match &mut self.long {
            Some(long) if self.before == 0 => {
                long.advance(n);
                if long.is_empty() {
                    self.long = None;
                }
            }
            Some(_) => {
                self.buf.advance(n);
                self.before -= n;
            }
            None => self.buf.advance(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(o: &mut Outbox, step: usize) -> Vec<u8> {
        let mut sent = Vec::new();
        while !o.is_empty() {
            let n = o.chunk().len().min(step);
            sent.extend_from_slice(&o.chunk()[..n]);
            o.advance(n);
        }
        sent
    }

    #[test]
    fn long_messages_go_out_in_their_place() {
        let mut o = Outbox::new(BytesMut::from(&b"ab"[..]));
        o.defer((1, Bytes::from_static(b"LONG")));
        o.buf.extend_from_slice(b"cd");
        o.defer((3, Bytes::from_static(b"SECOND")));
        assert_eq!(o.len(), 14);
        assert_eq!(drain(&mut o, 3), b"aLONGbcSECONDd");
        assert!(o.is_empty());
    }

    #[test]
    fn a_grown_buffer_is_not_kept() {
        let o = Outbox::new(BytesMut::with_capacity(1 << 20));
        assert_eq!(o.into_buf(64 * 1024).capacity(), 0);
        let o = Outbox::new(BytesMut::with_capacity(1024));
        assert_eq!(o.into_buf(64 * 1024).capacity(), 1024);
    }
}
