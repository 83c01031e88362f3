//! Process-wide settings for tensor work, applied by the binaries first thing
//! ([`tune_for_tensors`]): the allocator keeps freed tensor buffers, and denormal floats flush to
//! zero.
//!
//! **Allocator.** SigmaForge's binaries declare [`Allocator`] as their global allocator: blocks
//! smaller than [`LARGE_ALLOCATION`] (1 MiB) come from mimalloc, larger ones from the system
//! allocator, because the two kinds of work want different things:
//! - `sigmaforge hunt` and the reward load tens of thousands of events as millions of small
//!   strings on every core, and build thousands of rules from small parts: glibc's per-thread
//!   arenas grow by thousands of `mprotect` calls and its bins were ~14 % of the all-rules hunt's
//!   CPU. With mimalloc's thread-local pages that hunt takes 15–20 % less CPU.
//! - candle allocates a fresh buffer for every op's output, and a training step frees and
//!   re-allocates the same few sizes (megabytes to tens of megabytes) thousands of times. Memory
//!   returned to the kernel between two such allocations costs page faults, zeroing of fresh
//!   pages and TLB shootdowns on every op: with glibc's defaults that was a quarter of one GRPO
//!   update micro-batch of SmolLM2-135M on 2 cores. [`keep_freed_tensor_memory`] raises glibc's
//!   mmap threshold to its maximum (32 MiB) and stops trimming, so freed buffers are reused
//!   from the heap, and the trainers call [`release_free_memory`] once per step, so the process
//!   holds one step's peak. mimalloc for these buffers too was no faster and held a third more
//!   memory at the peak (1.86 against 1.40 GB over six update micro-batches of changing length;
//!   jemalloc and mimalloc with their default purge delays were slower still).
//!
//! Measured on 2 cores (BENCHMARKS.md, "Against rsigma", issue 17, fourth round). mimalloc asks
//! the kernel for transparent huge pages on its arenas, which made the hunt's peak RSS ~245 MB
//! instead of glibc's ~170 for no CPU gain: `hunt` and `check` turn them off
//! ([`avoid_huge_pages`], ~185 MB). Binaries that keep the system allocator alone (the test
//! harnesses) get the same glibc settings.
//!
//! **Denormals.** A confident policy puts log-probabilities of -90 and below on most of the
//! vocabulary; their exponentials and the gradients built from them are denormal floats, which
//! x86 cores handle in microcode at ~100x the cost of a normal operation. One such chunk of the
//! vocabulary projection's backward took 5.2 s instead of 0.7 s. [`flush_denormals`] sets
//! flush-to-zero and denormals-are-zero (MXCSR) as deep-learning frameworks do (PyTorch's
//! `set_flush_denormal`): values below 1.2e-38 become 0, far below anything a loss resolves.
//! Threads inherit the setting from the thread that creates them (POSIX), so calling it before
//! any thread starts covers candle's workers. Plugins keep exact IEEE semantics: the Wasm runtime
//! clears the flags for every call into a guest (`sigmaforge_runtime`).

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Allocations of this size and larger go to the system allocator, smaller ones to mimalloc
/// (see [`Allocator`]). Tensor buffers of any model worth training are larger; an event's
/// strings, a rule's parts and a record's rendering are far smaller.
pub const LARGE_ALLOCATION: usize = 1 << 20;

/// The global allocator of SigmaForge's binaries (declared with
/// `#[global_allocator] static ALLOCATOR: Allocator = Allocator;`): allocations smaller than
/// [`LARGE_ALLOCATION`] go to mimalloc, larger ones to the system allocator (glibc's malloc,
/// tuned by [`keep_freed_tensor_memory`]). See the module docs for why.
///
/// A block is always freed by the allocator that made it: Rust hands `dealloc` the layout the
/// block was allocated (or last reallocated) with, so its size picks the same side, and a
/// `realloc` across the threshold moves the block from one side to the other.
pub struct Allocator;

// SAFETY: every method forwards to one of two sound allocators, chosen by the block's size,
// which is the same for a block's allocation and its deallocation (see `Allocator`); a
// reallocation across the threshold allocates on the new side, copies the smaller of the two
// sizes and frees on the old side, as `GlobalAlloc::realloc`'s default does.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract (non-zero size) is passed on unchanged.
        unsafe { if layout.size() >= LARGE_ALLOCATION { System.alloc(layout) } else { MiMalloc.alloc(layout) } }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { if layout.size() >= LARGE_ALLOCATION { System.alloc_zeroed(layout) } else { MiMalloc.alloc_zeroed(layout) } }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `layout` is the block's, so its size names the side that allocated it.
        unsafe { if layout.size() >= LARGE_ALLOCATION { System.dealloc(ptr, layout) } else { MiMalloc.dealloc(ptr, layout) } }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (was_large, is_large) = (layout.size() >= LARGE_ALLOCATION, new_size >= LARGE_ALLOCATION);
        // SAFETY: same side: that allocator's realloc with the caller's contract. Across the
        // threshold: the new layout is valid (the caller guarantees `new_size`, rounded up to
        // `layout.align()`, does not overflow), the new block does not overlap the old one, and
        // the old block is freed with its own layout.
        unsafe {
            match (was_large, is_large) {
                (false, false) => MiMalloc.realloc(ptr, layout, new_size),
                (true, true) => System.realloc(ptr, layout, new_size),
                _ => {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// Which allocators serve this process's heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapAllocator {
    /// [`Allocator`]: mimalloc for small blocks, the system allocator for large ones.
    Split,
    /// The system allocator alone, on glibc (the test harnesses).
    Glibc,
    /// The system allocator alone, elsewhere (nothing to tune).
    Other,
}

/// What [`tune_for_tensors`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub allocator: HeapAllocator,
    /// glibc keeps freed large blocks until [`release_free_memory`].
    pub malloc_keeps_freed_memory: bool,
    pub denormals_flush_to_zero: bool,
}

/// Applies both settings (see the module docs). Call once, first thing in `main`.
pub fn tune_for_tensors() -> Tuning {
    Tuning { allocator: heap_allocator(), malloc_keeps_freed_memory: keep_freed_tensor_memory(), denormals_flush_to_zero: flush_denormals() }
}

/// Whether mimalloc made the block at `ptr`.
pub fn from_mimalloc(ptr: *const u8) -> bool {
    // SAFETY: mi_is_in_heap_region only looks the address up in mimalloc's own page map; any
    // address is allowed, and it never dereferences it.
    unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

/// Which allocators this process's heap allocations come from.
pub fn heap_allocator() -> HeapAllocator {
    let small = std::hint::black_box(Box::new(0u64));
    if from_mimalloc(std::ptr::from_ref(&*small).cast()) {
        HeapAllocator::Split
    } else if cfg!(all(target_os = "linux", target_env = "gnu")) {
        HeapAllocator::Glibc
    } else {
        HeapAllocator::Other
    }
}

/// Keeps freed tensor buffers in the process for reuse (see the module docs): on glibc, the
/// mmap threshold goes to its maximum and trimming stops. Call once, early in `main`, before
/// threads start. A user's own `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` environment
/// settings win; `SIGMAFORGE_MALLOC_DEFAULTS=1` leaves glibc's defaults (for comparisons).
/// Returns whether the settings were applied; a no-op elsewhere than glibc Linux.
pub fn keep_freed_tensor_memory() -> bool {
    let user_set = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "SIGMAFORGE_MALLOC_DEFAULTS"].iter().any(|v| std::env::var_os(v).is_some());
    !user_set && apply_glibc()
}

/// Turns transparent huge pages off for the rest of the process (Linux `PR_SET_THP_DISABLE`),
/// unless the user set `MIMALLOC_ALLOW_THP`. For short jobs of small allocations (`hunt`,
/// `check`): mimalloc asks for huge pages on its arenas, and a 2 MiB page is resident as soon
/// as one byte of it is touched, so the all-rules hunt's peak RSS was ~245 MB with them and
/// ~185 MB without, for the same CPU time (BENCHMARKS.md, issue 17, fourth round). Training
/// leaves them as the system has them. Returns whether they were turned off.
pub fn avoid_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory map.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// MXCSR bits: flush-to-zero (results) and denormals-are-zero (inputs).
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

/// Sets flush-to-zero and denormals-are-zero for this thread and the threads it creates from
/// now on. `SIGMAFORGE_KEEP_DENORMALS=1` leaves them off. Returns whether they were set (only on
/// x86-64; elsewhere a no-op).
pub fn flush_denormals() -> bool {
    if std::env::var_os("SIGMAFORGE_KEEP_DENORMALS").is_some() {
        return false;
    }
    set_flush_denormals()
}

#[cfg(target_arch = "x86_64")]
fn set_flush_denormals() -> bool {
    let mut csr: u32 = 0;
    // SAFETY: stmxcsr/ldmxcsr read and write this thread's SSE control register; only the two
    // flush bits change (no exception masks, no rounding mode).
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        csr |= FTZ_DAZ;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly, preserves_flags));
    }
    true
}

#[cfg(not(target_arch = "x86_64"))]
fn set_flush_denormals() -> bool {
    false
}

/// Gives the freed memory the allocators hold back to the kernel: glibc's `malloc_trim(0)`
/// (which also releases free pages inside the heap), and a forced `mi_collect` for the small
/// blocks under [`Allocator`].
/// Keeping freed buffers makes the heap fragment when tensor sizes change from step to step (a
/// GRPO step's rows have new lengths each time): with glibc and the composed log-softmax, peak
/// RSS grew 4.0 → 6.9 GB over four steps of the default's GRPO stage. The trainers call this
/// once per step, so the memory held is that of one step; the pages are faulted in again by the
/// next one (a fraction of a second per step). Returns whether glibc released memory (always
/// false elsewhere).
pub fn release_free_memory() -> bool {
    if heap_allocator() == HeapAllocator::Split {
        // SAFETY: mi_collect frees and purges only memory no live allocation uses.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
    trim_glibc()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_glibc() -> bool {
    // SAFETY: malloc_trim only returns free memory to the kernel; live allocations stay.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_glibc() -> bool {
    false
}

/// glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply_glibc() -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time (glibc
    // takes the arena lock), and the values are within the documented ranges.
    unsafe {
        // Setting either parameter also turns off glibc's dynamic adjustment of both.
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply_glibc() -> bool {
    false
}

#[cfg(test)]
mod tests {
    /// After [`super::flush_denormals`] a product below f32's normal range is 0 in this thread
    /// and in a thread it starts; before, it is a denormal.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn denormal_results_flush_to_zero_here_and_in_new_threads() {
        // A fresh thread, so the test harness's other threads keep their mode.
        std::thread::spawn(|| {
            let tiny = || std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32);
            assert!(tiny() > 0.0, "denormals flush before the setting");
            assert!(super::set_flush_denormals());
            assert_eq!(tiny(), 0.0);
            assert_eq!(std::thread::spawn(tiny).join().unwrap(), 0.0, "a new thread inherits the setting");
        })
        .join()
        .unwrap();
    }

    /// The test harness keeps the system allocator: the probe must not take it for mimalloc.
    #[test]
    fn the_system_allocator_is_not_taken_for_mimalloc() {
        let expected = if cfg!(all(target_os = "linux", target_env = "gnu")) { super::HeapAllocator::Glibc } else { super::HeapAllocator::Other };
        assert_eq!(super::heap_allocator(), expected);
    }

    /// With the settings applied, a 16 MiB buffer comes from the heap, not from its own mapping
    /// (glibc's default threshold starts at 128 KiB, so it would be mapped).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn tensor_sized_buffers_come_from_the_heap() {
        assert!(super::apply_glibc(), "glibc refused the settings");
        // SAFETY: mallinfo2 only reads allocator statistics.
        let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
        let before = mapped();
        let buffer = std::hint::black_box(vec![1u8; 16 << 20]);
        let during = mapped();
        assert_eq!(buffer[12345], 1);
        drop(buffer);
        assert!(during < before + (16 << 20), "a 16 MiB buffer was mapped on its own ({before} -> {during} mapped bytes)");
    }
}
