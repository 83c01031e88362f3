//! glibc malloc settings for tensor workloads.
//!
//! candle allocates a fresh buffer for every op's output, and a training step frees and
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
