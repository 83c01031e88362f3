//! The binaries' allocator (`process::Allocator`), in a test binary of its own that declares it
//! as the global allocator, as the CLI does: small blocks come from mimalloc and large ones from
//! glibc, a block moves sides when a reallocation crosses the threshold, and freed large blocks
//! stay in the process until `release_free_memory` gives them back to the kernel; and
//! `avoid_huge_pages` turns transparent huge pages off.
//!
//! A test without libtest's harness (`harness = false`): it runs on the main thread, where the
//! trainers allocate their tensors (glibc gives a worker thread an arena of its own, which
//! returns freed heaps to the kernel whatever the trim setting), and it reads the whole
//! process's resident memory, so nothing else may run beside it.

use sigmaforge_model::process::{self, Allocator, HeapAllocator, LARGE_ALLOCATION, from_mimalloc};

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// Resident memory of this process in bytes (`/proc/self/statm`, second field, in pages).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    small_blocks_from_mimalloc_large_from_glibc_kept_until_released();
    println!("allocator: ok");
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn small_blocks_from_mimalloc_large_from_glibc_kept_until_released() {
    let tuning = process::tune_for_tensors();
    assert_eq!(tuning.allocator, HeapAllocator::Split);
    assert!(tuning.malloc_keeps_freed_memory, "{tuning:?}");

    // Each side by size, and zeroed blocks too.
    let small = vec![1u8; LARGE_ALLOCATION - 1];
    let large = vec![1u8; LARGE_ALLOCATION];
    let zeroed_large = vec![0u64; LARGE_ALLOCATION];
    assert!(from_mimalloc(small.as_ptr()) && !from_mimalloc(large.as_ptr()) && !from_mimalloc(zeroed_large.as_ptr().cast()));
    assert!(zeroed_large.iter().all(|&x| x == 0));
    drop((small, large, zeroed_large));

    // A block that grows across the threshold moves to glibc with its content, and back when
    // it shrinks; growing and shrinking on one side keeps it there.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut moving = pattern.clone();
    moving.reserve(2 * LARGE_ALLOCATION);
    assert!(!from_mimalloc(moving.as_ptr()) && moving == pattern, "grown across the threshold");
    moving.reserve(8 * LARGE_ALLOCATION);
    assert!(!from_mimalloc(moving.as_ptr()) && moving == pattern, "grown on the large side");
    moving.shrink_to_fit();
    assert!(from_mimalloc(moving.as_ptr()) && moving == pattern, "shrunk across the threshold");
    moving.reserve(1000);
    assert!(from_mimalloc(moving.as_ptr()) && moving == pattern, "grown on the small side");

    // Tensor-sized buffers, every page touched, then freed: glibc keeps them (no trimming, and
    // below the raised mmap threshold they come from the heap) until the release.
    const MIB: u64 = 1 << 20;
    let buffers: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8 + 1; 16 << 20]).collect();
    let with_buffers = resident_bytes();
    assert!(buffers.iter().all(|b| b[12345] != 0));
    drop(buffers);
    let after_free = resident_bytes();
    assert!(
        after_free + 64 * MIB > with_buffers,
        "freed buffers went back to the kernel before the release: {} -> {} MiB",
        with_buffers / MIB,
        after_free / MIB
    );
    assert!(process::release_free_memory());
    let after_release = resident_bytes();
    assert!(
        after_release + 192 * MIB < after_free,
        "release_free_memory kept the freed 256 MiB: {} -> {} MiB",
        after_free / MIB,
        after_release / MIB
    );
    let again = vec![7u8; 16 << 20];
    assert_eq!(again[1 << 20], 7);

    // `hunt` and `check` turn transparent huge pages off for their process.
    // SAFETY: PR_GET_THP_DISABLE only reads the process's flag.
    let thp_disabled = || unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    assert!(process::avoid_huge_pages());
    assert_eq!(thp_disabled(), 1);
}
