//! A tiny deterministic generator for prompt variety.
//!
//! Prompts must be identical for a given seed on every platform and every build (native and
//! wasm), forever; a general-purpose RNG crate may change its streams between versions, so the
//! task uses SplitMix64 seeded by an FNV-1a hash of (seed, rule id, request number).

pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64, parts: &[&str]) -> Self {
        let mut h = fnv1a(0xcbf2_9ce4_8422_2325, seed.to_le_bytes().as_slice());
        for p in parts {
            h = fnv1a(h, p.as_bytes());
            h = fnv1a(h, &[0xff]); // separator: ("ab","c") and ("a","bc") differ
        }
        SplitMix64(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_depend_on_every_input_and_nothing_else() {
        let mut r = SplitMix64::new(0, &["rule", "0"]);
        let a = (r.next_u64(), r.next_u64());
        let mut r = SplitMix64::new(0, &["rule", "0"]);
        assert_eq!(a, (r.next_u64(), r.next_u64()));
        let mut other = SplitMix64::new(0, &["rul", "e0"]);
        assert_ne!(a.0, other.next_u64());
        let mut seeded = SplitMix64::new(1, &["rule", "0"]);
        assert_ne!(a.0, seeded.next_u64());
    }
}
