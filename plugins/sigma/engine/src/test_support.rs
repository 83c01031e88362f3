//! Helpers shared by the crate's unit tests.

/// A deterministic xorshift64 generator: the same seed gives the same sequence on every run, so
/// a randomized test that fails can be replayed. `seed` must not be zero.
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
