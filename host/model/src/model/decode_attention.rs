//! Attention of one new token per row against the KV cache, fused, on the CPU: the decoding
//! step's attention.
//!
//! Composed from candle ops, a decoding step's attention is two batched matmuls of one query row
//! per head (scores `q kᵀ`, then `p v`), each run by the f32 GEMM one (row, kv head) matrix at a
//! time, with the GEMM's operand packing on every call, plus a mask add and a softmax: on
//! SmolLM2-135M at B=8 that was a quarter of a decoding step (a `perf` profile: `pack_lhs` and
//! the small GEMM micro-kernels), more than its matmuls through the quantised weights.
//! Here each (row, kv head) pair is one work item: the scores of its query heads against the
//! cached keys, the softmax, and the weighted sum of the cached values, read in place from the
//! cache's buffers. Inference only (no backward); the differentiable path stays as it was.

use std::sync::Arc;

use super::pool::SharedOut;
use anyhow::Result;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// `softmax(q kᵀ · scale + mask) v` for one query position: q [b, nkv, g, hd] (the g query
/// heads sharing a kv head), k and v [b, nkv, s, hd] (the cache's views: the last dim
/// contiguous), `mask` the additive mask [b, s]. Returns [b, nkv, g, hd].
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Vec<f32>, scale: f32) -> Result<Tensor> {
    let op = DecodeAttention { mask: Arc::new(mask), scale };
    Ok(q.contiguous()?.apply_op3_arc(k, v, Arc::new(Box::new(op)))?)
}

struct DecodeAttention {
    /// [b, s]
    mask: Arc<Vec<f32>>,
    scale: f32,
}

/// Where an element of a rank-4 tensor with a contiguous last dim lives.
struct Strided4<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 3],
}

impl<'a> Strided4<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("decode attention: {what} must be f32");
        };
        let s = layout.stride();
        if layout.dims().len() != 4 || s[3] != 1 {
            candle_core::bail!("decode attention: {what} must be rank 4 with a contiguous last dim, got {:?} / {s:?}", layout.dims());
        }
        Ok(Self { data, start: layout.start_offset(), stride: [s[0], s[1], s[2]] })
    }

    fn row(&self, i: usize, j: usize, l: usize, len: usize) -> &'a [f32] {
        let at = self.start + i * self.stride[0] + j * self.stride[1] + l * self.stride[2];
        &self.data[at..at + len]
    }
}

/// a · b with 16 independent partial sums, so the compiler vectorises it.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (Strided4::new(qs, ql, "q")?, Strided4::new(ks, kl, "k")?, Strided4::new(vs, vl, "v")?);
        let (b, nkv, g, hd) = ql.shape().dims4()?;
        let (kb, kh, s, khd) = kl.shape().dims4()?;
        if (kb, kh, khd) != (b, nkv, hd) || vl.dims() != kl.dims() || self.mask.len() != b * s {
            candle_core::bail!(
                "decode attention: q {:?}, k {:?}, v {:?} and a mask of {} values do not fit",
                ql.dims(),
                kl.dims(),
                vl.dims(),
                self.mask.len()
            );
        }
        let mut out = vec![0f32; b * nkv * g * hd];
        let dst = SharedOut::new(&mut out);
        candle_core::utils::barrier_pool().execute_chunked(b * nkv, |items| {
            let mut p = vec![0f32; s];
            for item in items {
                let (row, head) = (item / nkv, item % nkv);
                let mask = &self.mask[row * s..(row + 1) * s];
                for qh in 0..g {
                    let query = q.row(row, head, qh, hd);
                    let mut max = f32::NEG_INFINITY;
                    for (j, pj) in p.iter_mut().enumerate() {
                        *pj = dot(query, k.row(row, head, j, hd)) * self.scale + mask[j];
                        max = max.max(*pj);
                    }
                    let mut sum = 0f32;
                    for pj in p.iter_mut() {
                        *pj = (*pj - max).exp();
                        sum += *pj;
                    }
                    // SAFETY: item (row, head) owns out[(item·g + qh)·hd ..][..hd], inside `out`.
                    let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add((item * g + qh) * hd), hd) };
                    for (j, &pj) in p.iter().enumerate() {
                        let w = pj / sum;
                        for (od, &vd) in o.iter_mut().zip(v.row(row, head, j, hd)) {
                            *od += w * vd;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, nkv, g, hd))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, IndexOp};

    use super::*;
    use crate::rng::SamplerRng;

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = SamplerRng::new(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn equals_the_composed_attention_on_cache_views() {
        let (b, nkv, g, hd, cap, s) = (3, 2, 3, 20, 9, 7);
        let q = random((b, nkv, g, hd), 1);
        // Views of a larger buffer, as the KV cache hands them out.
        let k = random((b, nkv, cap, hd), 2).narrow(2, 0, s).unwrap();
        let v = random((b, nkv, cap, hd), 3).narrow(2, 0, s).unwrap();
        let mut mask = vec![0f32; b * s];
        mask[0] = -1e9; // row 0: a padded first position
        mask[s + 1] = -1e9;
        mask[s + 2] = -1e9;
        let scale = 0.3;
        let got = decode_attention(&q, &k, &v, mask.clone(), scale).unwrap();
        let m = Tensor::from_vec(mask, (b, 1, 1, s), &Device::Cpu).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale as f64).unwrap().broadcast_add(&m).unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let want = probs.matmul(&v.contiguous().unwrap()).unwrap();
        let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-5, "max difference {err}");
        // A masked position takes no weight: row 0 does not depend on its value at position 0.
        let v2 = (v.contiguous().unwrap() * 1.0).unwrap();
        let bumped = Tensor::cat(&[(v2.i((0..1, .., 0..1, ..)).unwrap() + 100.0).unwrap(), v2.i((0..1, .., 1.., ..)).unwrap()], 2).unwrap();
        let v3 = Tensor::cat(&[bumped, v2.i(1..).unwrap()], 0).unwrap();
        let again = decode_attention(&q, &k, &v3, vec![-1e9].into_iter().chain(std::iter::repeat_n(0.0, b * s - 1)).collect(), scale).unwrap();
        let only_row0 = |t: &Tensor| t.i(0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let first = decode_attention(&q, &k, &v, vec![-1e9].into_iter().chain(std::iter::repeat_n(0.0, b * s - 1)).collect(), scale).unwrap();
        assert_eq!(only_row0(&again), only_row0(&first));
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let q = random((1, 1, 2, 8), 1);
        let k = random((1, 1, 4, 8), 2);
        assert!(decode_attention(&q, &k, &k, vec![0.0; 3], 1.0).is_err());
        assert!(decode_attention(&q, &random((1, 1, 4, 6), 3), &k, vec![0.0; 4], 1.0).is_err());
    }
}
