//! The process's memory allocator, under every pipeline step: mimalloc for the many small
//! blocks of logins and sessions, the system allocator for large ones (long messages).
//!
//! Why two: glibc's malloc was the largest user-space cost of a login (about a fifth of its
//! instructions, most of it in `free` and aligned allocation of the task), which mimalloc's
//! per-thread pages make a few instructions each. But mimalloc's `realloc` of a large block
//! copies it, where glibc maps large blocks on their own and grows them in place (`mremap`): a
//! message read by doubling its buffer then sat in memory twice, and a 200 MiB Query peaked at
//! more than twice its size. Routing by size keeps each allocator to what it does best.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of this size or more come from the system allocator (glibc maps anything over its
/// mmap threshold, at most 32 MiB, on its own). Buffers of the steady state are 8-64 KiB.
pub const LARGE: usize = 1 << 20;

/// The global allocator: `#[global_allocator] static A: Routed = Routed;` in the binary.
pub struct Routed;

fn is_large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: every block is allocated by one of the two allocators and returned to the same one.
// `GlobalAlloc` requires callers to pass `dealloc` and `realloc` the layout the block was last
// given (the new size after a `realloc`), so the block's size picks its allocator the same way
// each time. A `realloc` that crosses `LARGE` moves the block from one to the other.
unsafe impl GlobalAlloc for Routed {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, which has a non-zero size.
        unsafe {
            match is_large(layout.size()) {
                true => System.alloc(layout),
                false => MiMalloc.alloc(layout),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            match is_large(layout.size()) {
                true => System.alloc_zeroed(layout),
                false => MiMalloc.alloc_zeroed(layout),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the block came from the allocator its size selects (see the impl's comment).
        unsafe {
            match is_large(layout.size()) {
                true => System.dealloc(ptr, layout),
                false => MiMalloc.dealloc(ptr, layout),
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (was, will) = (is_large(layout.size()), is_large(new_size));
        if was == will {
            // SAFETY: the block stays with the allocator it came from.
            return unsafe {
                match was {
                    true => System.realloc(ptr, layout, new_size),
                    false => MiMalloc.realloc(ptr, layout, new_size),
                }
            };
        }
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, does not
        // overflow, which is what `from_size_align_unchecked` needs; the new block does not
        // overlap the old one, and both hold at least the bytes copied.
        unsafe {
            let moved = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(moved);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks grown and shrunk across the boundary keep their bytes and are freed by the
    /// allocator that made them (a mismatch would crash or be caught by the allocators).
    #[test]
    fn blocks_keep_their_bytes_across_the_boundary() {
        let a = Routed;
        let small = Layout::from_size_align(4096, 16).unwrap();
        unsafe {
            let p = a.alloc(small);
            assert!(!p.is_null());
            for i in 0..4096 {
                *p.add(i) = (i % 251) as u8;
            }
            let big = a.realloc(p, small, 3 * LARGE);
            assert!(!big.is_null());
            assert!((0..4096).all(|i| *big.add(i) == (i % 251) as u8));
            let big_layout = Layout::from_size_align(3 * LARGE, 16).unwrap();
            *big.add(3 * LARGE - 1) = 7;
            let bigger = a.realloc(big, big_layout, 5 * LARGE);
            assert_eq!(*bigger.add(3 * LARGE - 1), 7);
            let bigger_layout = Layout::from_size_align(5 * LARGE, 16).unwrap();
            let back = a.realloc(bigger, bigger_layout, 100);
            assert!((0..100).all(|i| *back.add(i) == (i % 251) as u8));
            a.dealloc(back, Layout::from_size_align(100, 16).unwrap());
            let z = a.alloc_zeroed(Layout::from_size_align(2 * LARGE, 64).unwrap());
            assert_eq!(z as usize % 64, 0);
            assert!((0..2 * LARGE).step_by(4096).all(|i| *z.add(i) == 0));
            a.dealloc(z, Layout::from_size_align(2 * LARGE, 64).unwrap());
        }
    }
}
