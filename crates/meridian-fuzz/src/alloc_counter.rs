//! A counting global allocator: per-thread current and peak heap bytes, so
//! the harness can bound what one input makes a decoder allocate.
//!
//! Install it in a *binary or test* (never in a library that others link):
//!
//! ```text
//! #[global_allocator]
//! static ALLOC: meridian_fuzz::CountingAlloc = meridian_fuzz::CountingAlloc;
//! ```
//!
//! Counters are thread-local so parallel tests do not pollute each other's
//! peaks. Memory freed on another thread than the one that allocated it
//! skews both threads' `current`; decoders under test are single-threaded.
//!
//! A single request of [`HUGE_REQUEST_BYTES`] or more calls the hook set
//! with [`set_huge_request_hook`] *before* it reaches the system allocator:
//! if that allocation then fails, the process aborts (Rust's
//! `handle_alloc_error` cannot be caught), and the hook is the only chance
//! to save the input that caused it.

// Why unsafe is allowed here, and only here: `GlobalAlloc` is an unsafe
// trait and its methods are unsafe fns. This module forwards every call
// unchanged to `std::alloc::System` with the caller's own pointer and
// layout, so the contract `System` needs is exactly the one our caller
// already promises; the only additions are counter updates on thread-local
// `Cell`s with const initializers (no allocation, no destructor, so they
// are usable at any point of a thread's life). The crate denies
// `unsafe_code` everywhere else (see Cargo.toml).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;

/// A single allocation request at least this large calls the huge-request
/// hook before it is attempted.
pub const HUGE_REQUEST_BYTES: usize = 1 << 30;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST_REQUEST: Cell<usize> = const { Cell::new(0) };
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

static HUGE_HOOK: OnceLock<fn(usize)> = OnceLock::new();

/// See the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAlloc;

fn track(delta: isize) {
    let _ = CURRENT.try_with(|c| {
        let now = c.get().saturating_add(delta);
        c.set(now);
        let _ = PEAK.try_with(|p| {
            if now > p.get() {
                p.set(now);
            }
        });
    });
}

fn note_request(size: usize) {
    let _ = LARGEST_REQUEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
    if size < HUGE_REQUEST_BYTES {
        return;
    }
    let Some(hook) = HUGE_HOOK.get() else { return };
    // The hook may allocate (formatting, writing a file); those small
    // requests come back here and must not re-enter it.
    let entered = IN_HOOK.try_with(|f| !f.replace(true)).unwrap_or(false);
    if entered {
        hook(size);
        let _ = IN_HOOK.try_with(|f| f.set(false));
    }
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_request(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_request(layout.size());
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with
        // this `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_request(new_size);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's, valid
        // for `layout.align()` by `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Sets the function called before any single request of at least
/// [`HUGE_REQUEST_BYTES`]. First caller wins; later calls are ignored.
pub fn set_huge_request_hook(hook: fn(usize)) {
    let _ = HUGE_HOOK.set(hook);
}

/// Heap accounting of the current thread from [`AllocScope::begin`] on.
#[derive(Debug)]
pub struct AllocScope {
    baseline: isize,
}

impl AllocScope {
    /// Starts measuring: the peak restarts from what is live now.
    pub fn begin() -> Self {
        let baseline = CURRENT.with(Cell::get);
        PEAK.with(|p| p.set(baseline));
        LARGEST_REQUEST.with(|l| l.set(0));
        AllocScope { baseline }
    }

    /// Most bytes live at once since `begin`, above what was live then.
    pub fn peak_bytes(&self) -> usize {
        usize::try_from(PEAK.with(Cell::get) - self.baseline).unwrap_or(0)
    }

    /// Largest single allocation or reallocation requested since `begin`.
    pub fn largest_request_bytes(&self) -> usize {
        LARGEST_REQUEST.with(Cell::get)
    }
}

/// True if [`CountingAlloc`] is this process's global allocator (without
/// it every peak reads 0 and the bound checks nothing).
pub fn is_installed() -> bool {
    let scope = AllocScope::begin();
    let probe = std::hint::black_box(vec![0u8; 4096]);
    let seen = scope.peak_bytes() >= 4096;
    drop(probe);
    seen
}
