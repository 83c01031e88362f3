//! `x Wᵀ` for a few rows of `x` against a dense f32 weight W [out, in], on the CPU: the matmuls
//! of a decoding step when the weights are f32 (a full fine-tune samples its rollouts from the
//! weights it trains).
//!
//! candle's CPU matmul hands every product to the `gemm` crate, which packs both operands into
//! its micro-kernel layout on each call: for one to a few rows that packing (of the whole weight
//! matrix) costs more than the product itself (`gemm_common::pack_lhs` was 29 % of an f32
//! decoding profile). A row-major W is already laid out for dot products along `in`: here each
//! weight row is read once and multiplied with every row of `x` (AVX-512, 16 lanes, one
//! accumulator per row of `x`), the weight rows split over candle's CPU thread pool.
//! Differentiable: the backward pass is two ordinary matmuls.

use std::sync::{Arc, OnceLock};

use super::pool::SharedOut;
use anyhow::Result;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

/// Up to this many rows of `x` go through the kernel; more are a GEMM's job.
pub const MAX_ROWS: usize = 16;

/// Whether this CPU runs the kernel (AVX-512 F), checked once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f") && std::env::var_os("SIGMAFORGE_NO_AVX512").is_none()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Whether [`matmul_t`] takes this product: f32 on the CPU, at most [`MAX_ROWS`] rows.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 && x.rank() == 2 && x.dims()[0] <= MAX_ROWS && available()
}

/// x [m, in] · W [out, in]ᵀ -> [m, out] through the kernel (see [`applies`]).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2_arc(&w.contiguous()?, Arc::new(Box::new(SmallMatmulT)))?)
}

/// x [m, in] · W [out, in]ᵀ: the kernel where it [`applies`], candle's matmul otherwise. Every
/// dense linear product of the model goes through here, so the same rows get the same numbers
/// whichever path (resident, streamed) computes them.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if applies(x, w) { matmul_t(x, w) } else { Ok(x.matmul(&w.t()?)?) }
}

struct SmallMatmulT;

impl CustomOp2 for SmallMatmulT {
    fn name(&self) -> &'static str {
        "small-matmul-t"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (xs, ws) else {
            candle_core::bail!("small-matmul-t: f32 operands only");
        };
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            candle_core::bail!("small-matmul-t: contiguous operands only");
        };
        let ((m, k), (n, wk)) = (xl.shape().dims2()?, wl.shape().dims2()?);
        if k != wk || m > MAX_ROWS || !available() {
            candle_core::bail!("small-matmul-t: x {:?} and W {:?} do not fit (at most {MAX_ROWS} rows, AVX-512)", xl.dims(), wl.dims());
        }
        let (x, w) = (&x[x0..x1], &w[w0..w1]);
        let mut out = vec![0f32; m * n];
        let dst = SharedOut::new(&mut out);
        // Groups of 4 weight rows per work item: enough items to balance two threads.
        let groups = n.div_ceil(4);
        candle_core::utils::barrier_pool().execute_chunked(groups, |items| {
            for group in items {
                for col in group * 4..(group * 4 + 4).min(n) {
                    // SAFETY: AVX-512 F is present (checked above); column `col` of `out`
                    // belongs to this item alone.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        avx512::column(x, m, k, &w[col * k..(col + 1) * k], dst.get(), n, col)
                    };
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), Some(grad.t()?.matmul(x)?)))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// out[r][col] = x[r] · w for every row r < m (m ≤ 16): `w` is read once.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; `out` must hold m rows of `n` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn column(x: &[f32], m: usize, k: usize, w: &[f32], out: *mut f32, n: usize, col: usize) {
        let mut acc = [_mm512_setzero_ps(); super::MAX_ROWS];
        let full = k / 16 * 16;
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 <= k, inside `w` and each row of `x`.
            let wv = unsafe { _mm512_loadu_ps(w.as_ptr().add(i)) };
            for (r, a) in acc.iter_mut().enumerate().take(m) {
                *a = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(x.as_ptr().add(r * k + i)) }, wv, *a);
            }
            i += 16;
        }
        if full < k {
            let mask: __mmask16 = (1u16 << (k - full)) - 1;
            // SAFETY: masked loads touch only the k - full remaining values.
            let wv = unsafe { _mm512_maskz_loadu_ps(mask, w.as_ptr().add(full)) };
            for (r, a) in acc.iter_mut().enumerate().take(m) {
                *a = _mm512_fmadd_ps(unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(r * k + full)) }, wv, *a);
            }
        }
        for (r, a) in acc.iter().enumerate().take(m) {
            // SAFETY: row r < m, column col < n.
            unsafe { *out.add(r * n + col) = _mm512_reduce_add_ps(*a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::rng::SamplerRng;

    fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut rng = SamplerRng::new(seed);
        Tensor::from_vec((0..rows * cols).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (rows, cols), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn equals_the_gemm_and_its_gradients_for_any_shape() {
        if !available() {
            eprintln!("this CPU has no AVX-512: the kernel is not used here, nothing to check");
            return;
        }
        // Widths with and without a tail of fewer than 16, row counts up to the limit.
        for (m, k, n) in [(1, 16, 5), (3, 40, 7), (8, 576, 33), (16, 7, 2)] {
            let x = Var::from_tensor(&random(m, k, 1)).unwrap();
            let w = Var::from_tensor(&random(n, k, 2)).unwrap();
            assert!(applies(x.as_tensor(), w.as_tensor()));
            let got = matmul_t(x.as_tensor(), w.as_tensor()).unwrap();
            let want = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
            assert!(max_diff(&got, &want) < 1e-4, "[{m}x{k}] · [{n}x{k}]ᵀ: {}", max_diff(&got, &want));
            let c = random(m, n, 3);
            let g1 = (got * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (want * &c).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w] {
                let (a, b) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                assert!(max_diff(a, b) < 1e-4, "gradient differs by {}", max_diff(a, b));
            }
        }
        assert!(!applies(&random(MAX_ROWS + 1, 8, 1), &random(4, 8, 2)));
    }
}
