//! Process-wide CPU settings for tensor work, applied by the binaries first thing
//! ([`tune_for_tensors`]): malloc keeps freed tensor buffers, and denormal floats flush to zero.
//!
//! **Malloc.** candle allocates a fresh buffer for every op's output, and a training step frees and
//! re-allocates the same few sizes (megabytes to tens of megabytes) thousands of times. With
//! glibc's defaults, blocks above the mmap threshold are mapped and unmapped on every
//! allocation, and memory freed at the top of the heap is trimmed back to the kernel: each
//! buffer then costs page faults, zeroing of fresh pages and, on unmap, TLB shootdowns to the
//! other cores. In one GRPO update micro-batch of SmolLM2-135M on 2 cores that was a quarter
//! of the time (BENCHMARKS.md, "GRPO update"). [`keep_freed_tensor_memory`] raises the mmap
//! threshold to glibc's maximum (32 MiB) and stops trimming, so freed buffers are reused from
//! the heap. The cost: the process keeps its peak heap instead of returning it between steps.
//!
//! jemalloc and mimalloc (as LD_PRELOAD) were measured on the same micro-batch and were slower
//! than glibc with these settings (36 s and 27 s against 18 s), so no allocator crate is linked.
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

/// What [`tune_for_tensors`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub malloc_keeps_freed_memory: bool,
    pub denormals_flush_to_zero: bool,
}

/// Applies both settings (see the module docs). Call once, first thing in `main`.
pub fn tune_for_tensors() -> Tuning {
    Tuning { malloc_keeps_freed_memory: keep_freed_tensor_memory(), denormals_flush_to_zero: flush_denormals() }
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

/// Gives the freed memory the allocator holds back to the kernel (glibc's `malloc_trim(0)`,
/// which also releases free pages inside the heap). Keeping freed buffers makes the heap
/// fragment when tensor sizes change from step to step (a GRPO step's rows have new lengths
/// each time): with the composed log-softmax, peak RSS grew 4.0 → 6.9 GB over four steps of the
/// default's GRPO stage. The trainers call this once per step, so the memory held is that of one
/// step; the pages are faulted in again by the next one (a fraction of a second per step).
/// Returns whether memory was released (always false off glibc).
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free memory to the kernel; live allocations stay.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Keeps freed tensor buffers in the process for reuse (see the module docs). Call once, early
/// in `main`, before threads start. A user's own `MALLOC_MMAP_THRESHOLD_` /
/// `MALLOC_TRIM_THRESHOLD_` environment settings win; `SIGMAFORGE_MALLOC_DEFAULTS=1` leaves
/// glibc's defaults (for comparisons). Returns whether the settings were applied; a no-op
/// elsewhere than glibc Linux.
pub fn keep_freed_tensor_memory() -> bool {
    let user_set = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "SIGMAFORGE_MALLOC_DEFAULTS"].iter().any(|v| std::env::var_os(v).is_some());
    if user_set {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time (glibc
    // takes the arena lock), and the values are within the documented ranges.
    unsafe {
        // Setting either parameter also turns off glibc's dynamic adjustment of both.
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
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

    /// With the settings applied, a 16 MiB buffer comes from the heap, not from its own mapping
    /// (glibc's default threshold starts at 128 KiB, so it would be mapped).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn tensor_sized_buffers_come_from_the_heap() {
        assert!(super::apply(), "glibc refused the settings");
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
