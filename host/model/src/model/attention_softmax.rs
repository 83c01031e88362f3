//! The attention probabilities of a training forward, fused: `softmax(scale · scores + mask)`
//! over the keys, with its backward.
//!
//! Composed from candle ops (scale, broadcast add of the mask, then the generic softmax's max,
//! subtract, exp, sum, divide) the `[B, heads, T, S]` scores pass through memory about six times
//! forward and, with candle's backward bookkeeping (a zeroed gradient buffer and an add per
//! node), several times more backward — per layer, and with activation checkpointing twice per
//! update. Fused, the forward reads the scores and mask once and writes the probabilities once;
//! the backward is `d scores = scale · p ⊙ (g − Σ_keys g ⊙ p)`, one pass.
//!
//! CPU f32 takes the fused path; other dtypes and devices the composed one (same values).

use std::sync::Arc;

use anyhow::{Result, ensure};
use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Shape, Tensor};

use super::pool::{SharedOut, for_each_row};

/// `softmax(scale · scores + mask)` over the last dim: scores `[B, H, T, S]`, an additive mask
/// `[B or 1, 1, T, S]` (a constant: it gets no gradient).
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, t, s) = scores.dims4()?;
    let (mb, m1, mt, ms) = mask.dims4()?;
    ensure!((mb == b || mb == 1) && m1 == 1 && mt == t && ms == s, "mask {:?} does not fit scores {:?}", mask.dims(), scores.dims());
    if scores.device().is_cpu() && scores.dtype() == DType::F32 && mask.dtype() == DType::F32 {
        let op = Arc::new(Box::new(Fused { scale: scale as f32, heads: h }) as Box<dyn CustomOp2 + Send + Sync>);
        return Ok(scores.contiguous()?.apply_op2_arc(&mask.contiguous()?, op)?);
    }
    let masked = (scores * scale)?.broadcast_add(mask)?;
    Ok(candle_nn::ops::softmax(&masked, D::Minus1)?)
}

/// The forward op; `heads` tells which mask row a score row reads.
struct Fused {
    scale: f32,
    heads: usize,
}

/// Score rows per work item.
const ROWS_PER_ITEM: usize = 16;

fn contiguous_f32<'a>(name: &str, s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{name}: contiguous f32 operands only"),
    }
}

impl CustomOp2 for Fused {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, ss: &CpuStorage, sl: &Layout, ms: &CpuStorage, ml: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(self.name(), ss, sl)?;
        let mask = contiguous_f32(self.name(), ms, ml)?;
        let dims = sl.dims();
        let (t, s) = (dims[2], dims[3]);
        let rows = scores.len() / s;
        let mask_batches = ml.dims()[0];
        let mut out = vec![0f32; scores.len()];
        let dst = SharedOut::new(&mut out);
        for_each_row(rows, ROWS_PER_ITEM, |r| {
            // Row r is (batch, head, query) = (r / (heads·t), ·, r % t).
            let batch = if mask_batches == 1 { 0 } else { r / (self.heads * t) };
            let m = &mask[(batch * t + r % t) * s..][..s];
            let x = &scores[r * s..(r + 1) * s];
            // SAFETY: out[r * s..(r + 1) * s] is row r's, which only this call handles.
            let p = unsafe { dst.row(r, s) };
            let mut max = f32::NEG_INFINITY;
            for ((o, &xv), &mv) in p.iter_mut().zip(x).zip(m) {
                *o = xv * self.scale + mv;
                max = max.max(*o);
            }
            let mut sum = 0f32;
            for o in p.iter_mut() {
                *o = (*o - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            p.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(out), sl.shape().clone()))
    }

    fn bwd(&self, _scores: &Tensor, _mask: &Tensor, probs: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = probs.apply_op2_arc(&grad.contiguous()?, Arc::new(Box::new(FusedGrad { scale: self.scale })))?;
        Ok((Some(d), None))
    }
}

/// Backward: probabilities and their gradient -> the scores' gradient.
struct FusedGrad {
    scale: f32,
}

impl CustomOp2 for FusedGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
    }

    fn cpu_fwd(&self, ps: &CpuStorage, pl: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let probs = contiguous_f32(self.name(), ps, pl)?;
        let grad = contiguous_f32(self.name(), gs, gl)?;
        if probs.len() != grad.len() {
            candle_core::bail!("{}: probabilities {:?} and gradient {:?} differ", self.name(), pl.dims(), gl.dims());
        }
        let s = *pl.dims().last().unwrap_or(&1);
        let rows = probs.len() / s;
        let mut out = vec![0f32; probs.len()];
        let dst = SharedOut::new(&mut out);
        for_each_row(rows, ROWS_PER_ITEM, |r| {
            let (p, g) = (&probs[r * s..(r + 1) * s], &grad[r * s..(r + 1) * s]);
            let dot: f32 = p.iter().zip(g).map(|(a, b)| a * b).sum();
            // SAFETY: out[r * s..(r + 1) * s] is row r's, which only this call handles.
            let d = unsafe { dst.row(r, s) };
            for ((o, &pv), &gv) in d.iter_mut().zip(p).zip(g) {
                *o = self.scale * pv * (gv - dot);
            }
        });
        Ok((CpuStorage::F32(out), pl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Values and the scores' gradient equal the composed ops', for a per-batch mask (padding
    /// and causal, one all-masked query row) and a shared one.
    #[test]
    fn fused_matches_the_composed_ops() {
        let (b, h, t, s) = (2, 3, 4, 5);
        let mut rng = crate::rng::SamplerRng::new(5);
        let scores = Var::from_vec((0..b * h * t * s).map(|_| rng.normal() as f32 * 3.0).collect::<Vec<_>>(), (b, h, t, s), &Device::Cpu).unwrap();
        let weights = Tensor::from_vec((0..b * h * t * s).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (b, h, t, s), &Device::Cpu).unwrap();
        let per_batch: Vec<f32> = (0..b * t * s)
            .map(|i| {
                let (bi, q, k) = (i / (t * s), (i / s) % t, i % s);
                let visible = k <= q + 1 && !(bi == 1 && k == 0) && !(bi == 1 && q == 0);
                if visible { 0.0 } else { -1e9 }
            })
            .collect();
        let per_batch = Tensor::from_vec(per_batch, (b, 1, t, s), &Device::Cpu).unwrap();
        let shared = per_batch.narrow(0, 0, 1).unwrap();
        for mask in [per_batch, shared] {
            let fused = masked_softmax(scores.as_tensor(), &mask, 0.125).unwrap();
            let composed = candle_nn::ops::softmax(&(scores.as_tensor() * 0.125).unwrap().broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
            let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g1 = (fused.clone() * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (composed.clone() * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, x, y) in [
                ("probabilities", flat(&fused), flat(&composed)),
                ("gradient", flat(g1.get(scores.as_tensor()).unwrap()), flat(g2.get(scores.as_tensor()).unwrap())),
            ] {
                for (a, c) in x.iter().zip(&y) {
                    assert!((a - c).abs() <= 1e-5, "{what}: {a} vs {c} (mask {:?})", mask.dims());
                }
            }
        }
    }
}
