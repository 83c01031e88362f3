//! Q8_0 weights × 8-bit activations on AVX-512 VNNI: the CPU matmul of a frozen base kept in
//! Q8_0 ([`super::quant::QuantMatmul`]), for decoding and prefill alike.
//!
//! Why our own kernel: candle 0.11's VNNI kernels (`quantized/repack_x86.rs`) quantise the
//! activations in 256-value blocks, so they only serve matmuls whose input width is a multiple of
//! 256. SmolLM2-135M's hidden size is 576: its Q8_0 matmuls fell back to candle's AVX2 dot
//! product of one (row, column) pair at a time while decoding, and to a dequantised f32 GEMM
//! (AVX2 micro-kernels) for prefill — which made prefill most of a rollout batch's time.
//!
//! The scheme is llama.cpp's Q8_0 × Q8_0: each 32-value block of an activation row is quantised
//! to i8 with its own scale (amax / 127), and a block's dot product with a weight block is an
//! exact integer sum scaled by the two scales. Weights are repacked once into tiles of 16 output
//! features × one 32-value block, laid out so that one `vpdpbusd` multiplies 4 consecutive
//! inputs of all 16 features by 4 activation bytes broadcast to every lane. `vpdpbusd` takes
//! unsigned × signed bytes, so weights are stored offset by +128 and the offset's contribution
//! (128 · Σ activation bytes, known per block) is subtracted. Several activation rows share each
//! loaded weight register, which is what makes batched decoding and prefill cheap.
//!
//! Work is split over (row panel, feature tile) items on candle's own CPU thread pool (the one
//! its other ops use), so a decoding step's small matmuls pay no extra thread wake-ups.

use std::sync::OnceLock;

use super::pool::SharedOut;
use anyhow::{Result, bail};

/// Values per Q8_0 block (one scale each).
const BLOCK: usize = 32;
/// Output features per tile: one 512-bit register of i32/f32 lanes.
const TILE: usize = 16;
/// Activation rows sharing each loaded weight register.
const ROWS: usize = 8;
/// Activation rows per work item (a multiple of [`ROWS`]): the panel stays in L2 while every
/// tile of the weight streams past it.
const PANEL: usize = 64;

/// Whether this CPU runs the kernel (AVX-512 F/BW and VNNI), checked once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::env::var_os("SIGMAFORGE_NO_VNNI").is_none()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// 16 features × 32 inputs of a weight, +128, as `[group of 4 inputs (8)][feature (16)][4]`.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TileQs([u8; BLOCK * TILE]);

/// A Q8_0 weight [n, k] repacked into 16-feature tiles (features past `n` are zero).
pub struct PackedQ8 {
    n: usize,
    k: usize,
    /// `[tile][block]`, each 512 bytes.
    qs: Vec<TileQs>,
    /// `[tile][block][feature]`, the blocks' f16 scales.
    scales: Vec<[u16; TILE]>,
}

impl PackedQ8 {
    /// Repacks the raw bytes of a Q8_0 tensor [n, k] (candle's / GGUF's `BlockQ8_0`: an f16
    /// scale then 32 i8 values, 34 bytes, blocks running along each row).
    pub fn from_q8_0_bytes(bytes: &[u8], n: usize, k: usize) -> Result<Self> {
        if !k.is_multiple_of(BLOCK) {
            bail!("Q8_0 rows hold whole blocks of {BLOCK}, got width {k}");
        }
        let nb = k / BLOCK;
        if bytes.len() != n * nb * 34 {
            bail!("a Q8_0 [{n}, {k}] weight holds {} bytes, got {}", n * nb * 34, bytes.len());
        }
        let tiles = n.div_ceil(TILE);
        let mut qs = vec![TileQs([128; BLOCK * TILE]); tiles * nb];
        let mut scales = vec![[0u16; TILE]; tiles * nb];
        for row in 0..n {
            let (t, f) = (row / TILE, row % TILE);
            for b in 0..nb {
                let block = &bytes[(row * nb + b) * 34..(row * nb + b + 1) * 34];
                scales[t * nb + b][f] = u16::from_le_bytes([block[0], block[1]]);
                let tile = &mut qs[t * nb + b].0;
                for (i, &q) in block[2..].iter().enumerate() {
                    tile[(i / 4) * TILE * 4 + f * 4 + i % 4] = (q as i8 as i16 + 128) as u8;
                }
            }
        }
        Ok(Self { n, k, qs, scales })
    }

    /// [out, in]
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The weight as row-major f32 [n, k]: each value times its block's scale (what candle's
    /// Q8_0 dequantisation gives for the same blocks).
    pub fn dequantize(&self) -> Vec<f32> {
        let nb = self.k / BLOCK;
        let mut out = vec![0f32; self.n * self.k];
        for (row, values) in out.chunks_exact_mut(self.k).enumerate() {
            let (t, f) = (row / TILE, row % TILE);
            for b in 0..nb {
                let d = half::f16::from_bits(self.scales[t * nb + b][f]).to_f32();
                let tile = &self.qs[t * nb + b].0;
                for (i, v) in values[b * BLOCK..(b + 1) * BLOCK].iter_mut().enumerate() {
                    *v = (tile[(i / 4) * TILE * 4 + f * 4 + i % 4] as i32 - 128) as f32 * d;
                }
            }
        }
        out
    }

    /// `x [m, k] (row-major) -> x Wᵀ [m, n]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        if x.len() != m * self.k {
            bail!("input holds {} values, expected {m} rows of {}", x.len(), self.k);
        }
        if !available() {
            bail!("the Q8_0 VNNI kernel needs AVX-512 VNNI, which this CPU lacks");
        }
        let acts = QuantRows::new(x, m, self.k);
        let mut out = vec![0f32; m * self.n];
        let tiles = self.n.div_ceil(TILE);
        let panels = m.div_ceil(PANEL);
        let dst = SharedOut::new(&mut out);
        candle_core::utils::barrier_pool().execute_chunked(panels * tiles, |items| {
            for item in items {
                let (panel, tile) = (item / tiles, item % tiles);
                let rows = panel * PANEL..((panel + 1) * PANEL).min(m);
                // SAFETY: the CPU has the features (checked above); each item writes only its
                // own rows × tile of `out`, which outlives the pool call.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    vnni::tile(self, tile, &acts, rows, dst.get())
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (tile, rows, &dst);
            }
        });
        Ok(out)
    }
}

/// Activation rows quantised to Q8_0 blocks, with what the kernel needs per block.
struct QuantRows {
    k: usize,
    /// `[row][k]`
    qs: Vec<i8>,
    /// `[row][block]` scale (amax / 127)
    d: Vec<f32>,
    /// `[row][block]` 128 · Σ qs: the +128 weight offset's share of the integer dot product.
    offset: Vec<i32>,
}

impl QuantRows {
    /// Quantises `m` rows of width `k` (a multiple of [`BLOCK`]), vectorised where the kernel runs.
    fn new(x: &[f32], m: usize, k: usize) -> Self {
        let nb = k / BLOCK;
        let mut rows = Self { k, qs: vec![0; m * k], d: vec![0.0; m * nb], offset: vec![0; m * nb] };
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: the CPU has AVX-512 F/BW (checked); the buffers hold m·k values.
            unsafe { vnni::quantize(x, &mut rows) };
            return rows;
        }
        rows.quantize_scalar(x);
        rows
    }

    /// Per block: d = amax / 127, q = round(x / d) (ties to even, as the vector code rounds).
    fn quantize_scalar(&mut self, x: &[f32]) {
        for (i, block) in x.chunks_exact(BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in self.qs[i * BLOCK..(i + 1) * BLOCK].iter_mut().zip(block) {
                *q = (v * id).round_ties_even() as i8;
                sum += *q as i32;
            }
            self.d[i] = d;
            self.offset[i] = 128 * sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, PackedQ8, QuantRows, ROWS, TILE};

    /// [`QuantRows::quantize_scalar`] with AVX-512, 32 values (two registers) per block.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW; `x` must hold as many values as `rows.qs`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize(x: &[f32], rows: &mut QuantRows) {
        assert_eq!(x.len(), rows.qs.len());
        let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
        for (i, block) in x.chunks_exact(BLOCK).enumerate() {
            // SAFETY: a block is 32 f32 values.
            let (lo, hi) = unsafe { (_mm512_loadu_ps(block.as_ptr()), _mm512_loadu_ps(block.as_ptr().add(16))) };
            let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(lo), abs(hi)));
            let d = amax / 127.0;
            let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            // Round to nearest, ties to even (the default rounding mode).
            let qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, id));
            let qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, id));
            let out = rows.qs[i * BLOCK..].as_mut_ptr();
            // SAFETY: 16 + 16 bytes of block `i`.
            unsafe {
                _mm_storeu_si128(out.cast(), _mm512_cvtepi32_epi8(qlo));
                _mm_storeu_si128(out.add(16).cast(), _mm512_cvtepi32_epi8(qhi));
            }
            rows.d[i] = d;
            rows.offset[i] = 128 * _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
        }
    }

    /// One feature tile of `w` for activation `rows`, written into `out` [m, n].
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VNNI; `out` must hold `rows.end` rows of `w.n` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile(w: &PackedQ8, tile: usize, acts: &QuantRows, rows: std::ops::Range<usize>, out: *mut f32) {
        let mut r = rows.start;
        while r < rows.end {
            let take = (rows.end - r).min(ROWS);
            // SAFETY: forwarded from the caller.
            unsafe {
                match take {
                    8 => rows_of::<8>(w, tile, acts, r, out),
                    7 => rows_of::<7>(w, tile, acts, r, out),
                    6 => rows_of::<6>(w, tile, acts, r, out),
                    5 => rows_of::<5>(w, tile, acts, r, out),
                    4 => rows_of::<4>(w, tile, acts, r, out),
                    3 => rows_of::<3>(w, tile, acts, r, out),
                    2 => rows_of::<2>(w, tile, acts, r, out),
                    _ => rows_of::<1>(w, tile, acts, r, out),
                }
            }
            r += take;
        }
    }

    /// `R` activation rows from `row0` against one 16-feature tile: every loaded weight register
    /// feeds `R` dot products.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    #[inline]
    unsafe fn rows_of<const R: usize>(w: &PackedQ8, tile: usize, acts: &QuantRows, row0: usize, out: *mut f32) {
        let nb = w.k / BLOCK;
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let tq = w.qs[tile * nb + b].0.as_ptr();
            // SAFETY: 16 f16 values = 32 bytes.
            let wd = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.scales[tile * nb + b].as_ptr().cast()) });
            let mut dot = [_mm512_setzero_si512(); R];
            for g in 0..BLOCK / 4 {
                // SAFETY: 64-byte aligned, 8 groups of 64 bytes per tile.
                let wv = unsafe { _mm512_load_si512(tq.add(g * 64).cast()) };
                for (i, d) in dot.iter_mut().enumerate() {
                    let at = (row0 + i) * acts.k + b * BLOCK + g * 4;
                    // SAFETY: `at + 4 <= (row0 + R) * k`, inside `acts.qs`.
                    let a = unsafe { std::ptr::read_unaligned(acts.qs.as_ptr().add(at).cast::<i32>()) };
                    *d = _mm512_dpbusd_epi32(*d, wv, _mm512_set1_epi32(a));
                }
            }
            for i in 0..R {
                let blk = (row0 + i) * nb + b;
                let exact = _mm512_sub_epi32(dot[i], _mm512_set1_epi32(acts.offset[blk]));
                let scale = _mm512_mul_ps(wd, _mm512_set1_ps(acts.d[blk]));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, acc[i]);
            }
        }
        let first = tile * TILE;
        let valid = (w.n - first).min(TILE);
        let mask: __mmask16 = if valid == TILE { !0 } else { (1u16 << valid) - 1 };
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: row `row0 + i` < m, features `first..first + valid` < n.
            unsafe { _mm512_mask_storeu_ps(out.add((row0 + i) * w.n + first), mask, *a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::rng::SamplerRng;

    fn scale(bits: u16) -> f32 {
        half::f16::from_bits(bits).to_f32()
    }

    #[test]
    fn unpacking_gives_the_dequantised_weight_exactly() {
        let (n, k) = (21, 96);
        let w = QTensor::quantize(&Tensor::from_vec(random(n, k, 3), (n, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
        let packed = PackedQ8::from_q8_0_bytes(&w.data().unwrap(), n, k).unwrap();
        let want = w.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(packed.dequantize(), want);
    }

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = SamplerRng::new(seed);
        (0..rows * cols).map(|_| rng.normal() as f32 * 0.5).collect()
    }

    /// The same arithmetic in plain scalar code: per block, the exact integer dot product of
    /// the weight's and the activation's i8 values times both scales.
    fn reference(w: &QTensor, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = w.shape().dims2().unwrap();
        let bytes = w.data().unwrap();
        let acts = QuantRows::new(x, m, k);
        let nb = k / BLOCK;
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for f in 0..n {
                let mut sum = 0f32;
                for b in 0..nb {
                    let block = &bytes[(f * nb + b) * 34..(f * nb + b + 1) * 34];
                    let wd = scale(u16::from_le_bytes([block[0], block[1]]));
                    let dot: i32 = (0..BLOCK).map(|i| block[2 + i] as i8 as i32 * acts.qs[r * k + b * BLOCK + i] as i32).sum();
                    sum += dot as f32 * wd * acts.d[r * nb + b];
                }
                out[r * n + f] = sum;
            }
        }
        out
    }

    #[test]
    fn the_kernel_computes_the_q8_0_dot_products_for_any_shape() {
        if !available() {
            eprintln!("this CPU has no AVX-512 VNNI: the kernel is not used here, nothing to check");
            return;
        }
        // Feature counts that are and are not multiples of the tile, row counts below, at and
        // across the 8-row groups and the 64-row panels.
        for (n, k, m) in [(16, 32, 1), (40, 64, 3), (24, 96, 8), (33, 128, 13), (64, 576, 70), (7, 32, 130)] {
            let w = QTensor::quantize(&Tensor::from_vec(random(n, k, n as u64), (n, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
            let packed = PackedQ8::from_q8_0_bytes(&w.data().unwrap(), n, k).unwrap();
            let x = random(m, k, 7 + m as u64);
            let got = packed.matmul(&x, m).unwrap();
            let want = reference(&w, &x, m);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "[{n}x{k}] x {m} rows: out[{i}] = {g}, reference {e}");
            }
            // And close to the dequantised weight times the unquantised input (8-bit activations).
            let dense = w.dequantize(&Device::Cpu).unwrap();
            let exact = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap().matmul(&dense.t().unwrap()).unwrap();
            let exact = exact.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = got.iter().zip(&exact).fold(0f32, |a, (g, e)| a.max((g - e).abs()));
            assert!(err < 0.02 * scale, "[{n}x{k}] x {m} rows: error {err} against the dequantised matmul (scale {scale})");
        }
    }

    #[test]
    fn vector_and_scalar_quantisation_agree() {
        let (m, k) = (5, 96);
        let mut x = random(m, k, 11);
        x[..BLOCK].fill(0.0); // an all-zero block: scale 0, every value 0
        x[BLOCK] = 3.0; // a tie after scaling: 3 · 127 / 3 = 127 exactly
        let fast = QuantRows::new(&x, m, k);
        let mut slow = QuantRows { k, qs: vec![0; m * k], d: vec![0.0; m * k / BLOCK], offset: vec![0; m * k / BLOCK] };
        slow.quantize_scalar(&x);
        assert_eq!(fast.qs, slow.qs);
        assert_eq!(fast.d, slow.d);
        assert_eq!(fast.offset, slow.offset);
        assert!(fast.qs[..BLOCK].iter().all(|&q| q == 0));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(PackedQ8::from_q8_0_bytes(&[0; 34], 1, 31).is_err());
        assert!(PackedQ8::from_q8_0_bytes(&[0; 33], 1, 32).is_err());
        let packed = PackedQ8::from_q8_0_bytes(&[0; 34], 1, 32).unwrap();
        assert!(packed.matmul(&[0.0; 31], 1).is_err());
    }
}
