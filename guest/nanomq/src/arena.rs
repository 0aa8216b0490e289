//! The Rust guests' allocator: each call's memory bumped from one arena (wasm32 only).
//!
//! Everything a call allocates dies by its end: the host's copies of the event's strings, the
//! guest's temporaries, the body (freed by the post-return). Through dlmalloc, those mallocs and
//! frees cost about 2,000 instructions of a 100-byte publish, a fifth of the guest's own code
//! (BENCHMARKS.md). So once the guest is configured ([`start`]), allocations are bumped from a
//! fixed arena, a free only counts down, and the arena starts over when the last of them is
//! freed: between calls nothing is live in it. What the arena cannot hold goes to the system
//! allocator (dlmalloc), as everything did before: allocations made before configure ended (the
//! guest's state, which lives for the instance), ones that do not fit, and, if something a call
//! allocated outlives it (a cache, a lazily made static), every allocation after the arena fills,
//! until all of its own are freed again. Either way nothing is lost and nothing is reused early.
//!
//! Single-threaded by design, as wasm32 guests are: the atomics are plain loads and stores there,
//! and the load-then-store updates would race if two threads shared one arena.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The arena's size: a batch of 64 publishes of 100 B with their bodies needs about 40 KiB;
/// only the pages a call reaches are ever touched.
pub const ARENA_BYTES: usize = 256 << 10;

/// A bump arena over `[start, end)` in front of the system allocator; inactive (all to the system
/// allocator) until [`Arena::start`].
pub struct Arena {
    start: AtomicUsize,
    end: AtomicUsize,
    /// The next free byte.
    top: AtomicUsize,
    /// Allocations in the arena not yet freed.
    live: AtomicUsize,
}

impl Arena {
    /// An inactive arena.
    pub const fn new() -> Arena {
        Arena {
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            top: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` bytes from the system allocator and bumps from them from now on; does nothing
    /// if the arena already has its memory, or if the system allocator has none to give.
    pub fn start(&self, bytes: usize) {
        if self.start.load(Relaxed) != 0 {
            return;
        }
        let Ok(layout) = Layout::from_size_align(bytes, 16) else { return };
        if bytes == 0 {
            return;
        }
        // SAFETY: the layout has a non-zero size.
        let region = unsafe { System.alloc(layout) };
        if region.is_null() {
            return;
        }
        let start = region as usize;
        self.top.store(start, Relaxed);
        self.end.store(start + bytes, Relaxed);
        self.start.store(start, Relaxed);
    }

    /// Whether `ptr` was bumped from the arena.
    fn owns(&self, ptr: *mut u8) -> bool {
        let address = ptr as usize;
        address >= self.start.load(Relaxed) && address < self.end.load(Relaxed)
    }

    /// `layout` bumped from the arena, or `None` when it is inactive or full.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        if self.start.load(Relaxed) == 0 {
            return None;
        }
        let top = self.top.load(Relaxed);
        let aligned = top.checked_add(layout.align() - 1)? & !(layout.align() - 1);
        let new_top = aligned.checked_add(layout.size())?;
        if new_top > self.end.load(Relaxed) {
            return None;
        }
        self.top.store(new_top, Relaxed);
        self.live.fetch_add(1, Relaxed);
        Some(aligned as *mut u8)
    }

    /// Frees an arena allocation of `size` bytes at `ptr`: the last one made gives its bytes back,
    /// and the arena starts over once none is live.
    fn release(&self, ptr: *mut u8, size: usize) {
        let live = self.live.load(Relaxed) - 1;
        self.live.store(live, Relaxed);
        if live == 0 {
            self.top.store(self.start.load(Relaxed), Relaxed);
        } else if ptr as usize + size == self.top.load(Relaxed) {
            self.top.store(ptr as usize, Relaxed);
        }
    }

    /// Resizes the arena allocation at `ptr` where it is: it shrinks, or it is the last one made
    /// and the arena has room. False when it must move.
    fn resize_in_place(&self, ptr: *mut u8, old_size: usize, new_size: usize) -> bool {
        let address = ptr as usize;
        if address + old_size == self.top.load(Relaxed) && address + new_size <= self.end.load(Relaxed) {
            self.top.store(address + new_size, Relaxed);
            return true;
        }
        new_size <= old_size
    }
}

impl Default for Arena {
    fn default() -> Arena {
        Arena::new()
    }
}

// SAFETY: every pointer handed out is either a fresh, aligned, unshared range of the arena
// (bumped past, never handed out again while live: the arena only starts over when no allocation
// in it is live) or the system allocator's; frees and resizes go back to whichever made it.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's layout contract is passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.owns(ptr) {
            self.release(ptr, layout.size());
        } else {
            // SAFETY: not the arena's, so the system allocator made it with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.owns(ptr) {
            // SAFETY: the system allocator made it with this layout; the caller's contract holds.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if self.resize_in_place(ptr, layout.size(), new_size) {
            return ptr;
        }
        // SAFETY: the caller guarantees that `new_size`, rounded up to the alignment, fits a
        // layout; the old allocation is valid for `layout.size()` bytes and the new one for
        // `new_size`, and they do not overlap (the new one is fresh).
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.release(ptr, layout.size());
            }
            moved
        }
    }
}

/// The allocator of every wasm32 artifact built on this library.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: Arena = Arena::new();

/// Starts bumping each call's allocations from the arena: called when configure has succeeded, so
/// that the guest's own state comes from the system allocator. Natively (tests, the benchmarks'
/// baseline) the system allocator stays in charge and this does nothing.
pub fn start() {
    #[cfg(target_arch = "wasm32")]
    ALLOCATOR.start(ARENA_BYTES);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn before_start_everything_is_the_system_allocators() {
        let arena = Arena::new();
        unsafe {
            let ptr = arena.alloc(layout(64, 8));
            assert!(!ptr.is_null() && !arena.owns(ptr));
            arena.dealloc(ptr, layout(64, 8));
        }
    }

    #[test]
    fn a_calls_allocations_are_bumped_aligned_and_the_arena_starts_over_once_all_are_freed() {
        let arena = Arena::new();
        arena.start(4096);
        let start = arena.start.load(Relaxed);
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(16, 8));
            let c = arena.alloc(layout(5, 16));
            assert_eq!(a as usize, start);
            assert_eq!(b as usize, start + 8, "aligned up past a");
            assert_eq!(c as usize % 16, 0);
            assert!(c as usize >= b as usize + 16, "no overlap");
            // Freed out of order: the arena keeps the others intact until the last goes.
            b.write_bytes(0xAB, 16);
            arena.dealloc(a, layout(3, 1));
            arena.dealloc(c, layout(5, 16));
            assert_eq!(*b.add(15), 0xAB);
            assert_ne!(arena.top.load(Relaxed), start);
            arena.dealloc(b, layout(16, 8));
            assert_eq!(arena.top.load(Relaxed), start, "empty again: the next call starts at the bottom");
            assert_eq!(arena.alloc(layout(8, 8)) as usize, start);
        }
    }

    #[test]
    fn what_does_not_fit_or_outlives_a_call_goes_to_the_system_allocator() {
        let arena = Arena::new();
        arena.start(256);
        unsafe {
            let kept = arena.alloc(layout(100, 8));
            assert!(arena.owns(kept));
            let big = arena.alloc(layout(1000, 8));
            assert!(!big.is_null() && !arena.owns(big), "too big for the arena");
            big.write_bytes(7, 1000);
            arena.dealloc(big, layout(1000, 8));
            // `kept` outlives many "calls": the arena fills and every later allocation falls back.
            let mut owned = 0;
            for _ in 0..10 {
                let ptr = arena.alloc(layout(64, 8));
                owned += usize::from(arena.owns(ptr));
                ptr.write_bytes(1, 64);
                arena.dealloc(ptr, layout(64, 8));
            }
            assert_eq!(owned, 10, "the last allocation freed gives its bytes back, so these fit");
            let held: Vec<*mut u8> = (0..4).map(|_| arena.alloc(layout(64, 8))).collect();
            assert_eq!(held.iter().filter(|&&p| arena.owns(p)).count(), 2, "152 bytes left: two of 64");
            assert!(held.iter().all(|p| !p.is_null()));
            for ptr in held {
                arena.dealloc(ptr, layout(64, 8));
            }
            arena.dealloc(kept, layout(100, 8));
            assert_eq!(arena.top.load(Relaxed), arena.start.load(Relaxed));
        }
    }

    #[test]
    fn the_last_allocation_grows_in_place_and_others_move_with_their_bytes() {
        let arena = Arena::new();
        arena.start(1024);
        unsafe {
            let first = arena.alloc(layout(8, 1));
            first.copy_from_nonoverlapping(b"12345678".as_ptr(), 8);
            let grown = arena.realloc(first, layout(8, 1), 64);
            assert_eq!(grown, first, "the last one made grows where it is");
            let second = arena.alloc(layout(8, 1));
            let moved = arena.realloc(grown, layout(64, 1), 128);
            assert_ne!(moved, grown, "no longer the last: it moves");
            assert_eq!(std::slice::from_raw_parts(moved, 8), b"12345678");
            let huge = arena.realloc(moved, layout(128, 1), 4096);
            assert!(!arena.owns(huge), "past the arena: the system allocator's");
            assert_eq!(std::slice::from_raw_parts(huge, 8), b"12345678");
            let back = arena.realloc(huge, layout(4096, 1), 16);
            assert_eq!(std::slice::from_raw_parts(back, 8), b"12345678");
            arena.dealloc(back, layout(16, 1));
            arena.dealloc(second, layout(8, 1));
            assert_eq!(arena.live.load(Relaxed), 0);
        }
    }
}
