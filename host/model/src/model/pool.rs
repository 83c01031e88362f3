//! What this module's CPU kernels share to split work over candle's thread pool
//! (`candle_core::utils::barrier_pool`, the one candle's own CPU ops use, so kernels never
//! compete with a second pool for the cores).

/// An output buffer's pointer, shared by the pool's workers. Whoever uses it gives every work
/// item a disjoint part of the buffer and keeps the buffer alive for the whole pool call.
pub(crate) struct SharedOut(*mut f32);

// SAFETY: the pointer is only written through, at disjoint places per work item (the contract
// above), and the buffer outlives the pool call that shares it.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> Self {
        Self(out.as_mut_ptr())
    }

    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }

    /// Row `r` of `len` values.
    ///
    /// # Safety
    /// No other work item touches that row while the slice lives, and it is inside the buffer.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn row(&self, r: usize, len: usize) -> &mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r * len), len) }
    }
}

/// Calls `f(r)` for every row `r < n` on the pool, `per_item` consecutive rows per work item.
pub(crate) fn for_each_row(n: usize, per_item: usize, f: impl Fn(usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(per_item), |items| {
        for item in items {
            (item * per_item..((item + 1) * per_item).min(n)).for_each(&f);
        }
    });
}
