//! Spare buffers beside the session step: an idle client gives its read, write and server
//! buffers back here and takes them again when its next request arrives, so a client holds
//! buffers only while it has something in flight. Kept per worker thread (no lock); a thread
//! keeps a bounded number, the rest go back to the allocator.

use std::cell::RefCell;

use bytes::BytesMut;

/// The size a buffer is handed out with.
pub const SIZE: usize = 8 * 1024;
/// Buffers kept per thread: enough for the clients one thread serves at once.
const KEEP: usize = 256;
/// A buffer grown past this is not kept (a large message should not pin its memory).
const MAX_KEPT: usize = 64 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of at least `SIZE` bytes, reused when one is spare.
pub fn take() -> BytesMut {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Gives `buf` back (emptied). A buffer whose frames are still in use, or of an odd size, is
/// simply dropped.
pub fn give(mut buf: BytesMut) {
    buf.clear();
    // Reading and forwarding advance the buffer's start; taking the room back before the
    // allocation is whole again costs no copy (it is empty) and keeps it reusable.
    if !buf.try_reclaim(SIZE) || buf.capacity() > MAX_KEPT {
        return;
    }
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_small_or_huge_ones_dropped() {
        let mut b = take();
        assert!(b.capacity() >= SIZE);
        b.extend_from_slice(b"abc");
        let ptr = b.as_ptr();
        give(b);
        let again = take();
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        let mut advanced = take();
        let advanced_ptr = advanced.as_ptr();
        advanced.extend_from_slice(&[7; 100]);
        let frame = advanced.split_to(60);
        drop(frame);
        give(advanced);
        assert_eq!(
            take().as_ptr(),
            advanced_ptr,
            "an advanced buffer is taken back whole"
        );
        let mut shared = take();
        shared.extend_from_slice(b"xyz");
        let held = shared.split_to(2);
        give(shared);
        assert!(!held.is_empty());
        give(BytesMut::with_capacity(16));
        give(BytesMut::with_capacity(1 << 20));
        let fresh = take();
        assert_ne!(fresh.as_ptr(), ptr);
        assert!(fresh.capacity() >= SIZE && fresh.capacity() <= MAX_KEPT);
    }
}
