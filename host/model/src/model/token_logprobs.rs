//! log p(target) and the entropy of softmax(logits / temperature) at every position, fused.
//!
//! The policy losses read one log-probability per position out of a `[N, T, vocab]` tensor.
//! Composed from candle ops (scale, log-softmax, gather, and exp/mul/sum for the entropy) that is
//! about ten full passes over the logits forward and as many backward, each writing a fresh
//! vocabulary-sized tensor: with SmolLM2's 49,152-token vocabulary, a chunk of 384 positions is
//! 75 MB per tensor, above malloc's mmap threshold, so every one of them was also page-faulted
//! and zeroed by the kernel. Fused, the forward reads the logits twice (max, then the sums) and
//! writes two numbers per position; the backward writes the gradient once:
//! `d logits = g / T · (onehot(target) − softmax(logits / T))`, with log Z taken from the
//! forward's log-prob (`x_target / T − log p`) rather than a second reduction over the row.
//!
//! CPU f32 takes the fused path; other dtypes and devices take the composed one (same values).

use std::sync::Arc;

use anyhow::{Result, ensure};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, DType, Layout, Shape, Tensor};

use super::pool::{SharedOut, for_each_row};

/// `(log p(target), entropy)`, both `[N, T]`, of `softmax(logits / temperature)` for logits
/// `[N, T, V]` and u32 targets `[N, T]`. The log-probs are differentiable w.r.t. the logits; the
/// entropy is a metric (no gradient). `temperature` ≤ 0 or 1 means none.
pub fn token_logprobs_and_entropy(logits: &Tensor, targets: &Tensor, temperature: f64) -> Result<(Tensor, Tensor)> {
    ensure!(logits.rank() == 3, "logits must be [N, T, V], got {:?}", logits.dims());
    let (n, t, _) = logits.dims3()?;
    ensure!(targets.dims() == [n, t], "targets must be [{n}, {t}], got {:?}", targets.dims());
    let scale = if temperature > 0.0 { 1.0 / temperature } else { 1.0 };
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        let out = logits.contiguous()?.apply_op2_arc(&targets, Arc::new(Box::new(Fused { scale: scale as f32 })))?;
        return Ok((out.narrow(2, 0, 1)?.squeeze(2)?, out.narrow(2, 1, 1)?.squeeze(2)?.detach()));
    }
    composed(logits, &targets, scale)
}

/// The reference composition of candle ops (any dtype, any device).
fn composed(logits: &Tensor, targets: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    let logits = if (scale - 1.0).abs() > 1e-12 { (logits * scale)? } else { logits.clone() };
    let logsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let logp = logsm.gather(&targets.unsqueeze(2)?, D::Minus1)?.squeeze(2)?;
    let logsm_d = logsm.detach();
    let entropy = (logsm_d.exp()? * &logsm_d)?.sum(D::Minus1)?.neg()?;
    Ok((logp, entropy))
}

/// Forward: `[N, T, V]` logits and `[N, T]` targets -> `[N, T, 2]` (log-prob, entropy).
struct Fused {
    scale: f32,
}

/// Backward: logits, targets and `[N, T, 2]` (the log-probs' gradient, the forward's log-probs)
/// -> the logits' gradient.
struct FusedGrad {
    scale: f32,
}

/// Rows of the logits and their targets, checked.
fn rows<'a>(name: &str, ls: &'a CpuStorage, ll: &Layout, ts: &'a CpuStorage, tl: &Layout) -> candle_core::Result<(&'a [f32], &'a [u32], usize)> {
    let (CpuStorage::F32(logits), CpuStorage::U32(targets)) = (ls, ts) else {
        candle_core::bail!("{name}: f32 logits and u32 targets only");
    };
    let (Some((l0, l1)), Some((t0, t1))) = (ll.contiguous_offsets(), tl.contiguous_offsets()) else {
        candle_core::bail!("{name}: contiguous operands only");
    };
    let v = *ll.dims().last().unwrap_or(&0);
    let (logits, targets) = (&logits[l0..l1], &targets[t0..t1]);
    if v == 0 || logits.len() != targets.len() * v {
        candle_core::bail!("{name}: logits {:?} do not match targets {:?}", ll.dims(), tl.dims());
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("{name}: target {bad} is outside the vocabulary of {v}");
    }
    Ok((logits, targets, v))
}

/// `(max, log Σ exp(x − max), Σ exp(x − max)·x / Σ exp(x − max))` of a scaled row.
fn row_stats(row: &[f32], scale: f32) -> (f32, f32, f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    let (mut sum, mut weighted) = (0f32, 0f32);
    for &x in row {
        let xs = x * scale;
        let e = (xs - max).exp();
        sum += e;
        weighted += e * xs;
    }
    (max, sum.ln(), weighted / sum)
}

/// Rows per work item: a few thousand vocabulary entries each is far below the pool's overhead.
const ROWS_PER_ITEM: usize = 4;

impl CustomOp2 for Fused {
    fn name(&self) -> &'static str {
        "token-logprobs"
    }

    fn cpu_fwd(&self, ls: &CpuStorage, ll: &Layout, ts: &CpuStorage, tl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (logits, targets, v) = rows(self.name(), ls, ll, ts, tl)?;
        let n = targets.len();
        let mut out = vec![0f32; n * 2];
        let dst = SharedOut::new(&mut out);
        for_each_row(n, ROWS_PER_ITEM, |r| {
            let row = &logits[r * v..(r + 1) * v];
            let (max, log_sum, mean_x) = row_stats(row, self.scale);
            let log_z = max + log_sum;
            // SAFETY: out[2r], out[2r + 1] belong to row r, which only this call handles.
            let pair = unsafe { dst.row(r, 2) };
            pair[0] = row[targets[r] as usize] * self.scale - log_z;
            pair[1] = log_z - mean_x;
        });
        let mut dims = ll.dims().to_vec();
        *dims.last_mut().expect("rank 3") = 2;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Only the log-prob column carries a gradient (the entropy is detached). The forward's
        // log-probs go along: with them the backward finds log Z without re-reading the row.
        let grad_and_logp = Tensor::cat(&[grad.narrow(2, 0, 1)?, res.narrow(2, 0, 1)?], 2)?.contiguous()?;
        let d = logits.apply_op3_arc(targets, &grad_and_logp, Arc::new(Box::new(FusedGrad { scale: self.scale })))?;
        Ok((Some(d), None))
    }
}

impl CustomOp3 for FusedGrad {
    fn name(&self) -> &'static str {
        "token-logprobs-grad"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (logits, targets, v) = rows(self.name(), ls, ll, ts, tl)?;
        let (CpuStorage::F32(grad), Some((g0, g1))) = (gs, gl.contiguous_offsets()) else {
            candle_core::bail!("{}: a contiguous f32 gradient only", self.name());
        };
        let grad = &grad[g0..g1];
        let n = targets.len();
        if grad.len() != 2 * n {
            candle_core::bail!("{}: gradient and log-probs {:?} do not match targets {:?}", self.name(), gl.dims(), tl.dims());
        }
        let mut out = vec![0f32; n * v];
        let dst = SharedOut::new(&mut out);
        for_each_row(n, ROWS_PER_ITEM, |r| {
            let (g, logp) = (grad[2 * r] * self.scale, grad[2 * r + 1]);
            if g == 0.0 {
                return; // a masked position: the zeros are its gradient
            }
            // SAFETY: out[r * v..(r + 1) * v] is row r's, which only this call handles.
            let d = unsafe { dst.row(r, v) };
            let row = &logits[r * v..(r + 1) * v];
            let log_z = row[targets[r] as usize] * self.scale - logp;
            for (o, &x) in d.iter_mut().zip(row) {
                *o = -g * (x * self.scale - log_z).exp();
            }
            d[targets[r] as usize] += g;
        });
        Ok((CpuStorage::F32(out), ll.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn inputs() -> (Var, Tensor) {
        let (n, t, v) = (2, 5, 37);
        let mut rng = crate::rng::SamplerRng::new(3);
        // Wide logits: some rows put most entries 100+ nats below the top (underflow territory).
        let vals: Vec<f32> = (0..n * t * v).map(|i| rng.normal() as f32 * if i % 3 == 0 { 40.0 } else { 2.0 }).collect();
        let logits = Var::from_vec(vals, (n, t, v), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..n * t).map(|i| ((i * 11) % v) as u32).collect();
        (logits, Tensor::from_vec(targets, (n, t), &Device::Cpu).unwrap())
    }

    /// The fused path gives the composed ops' log-probs, entropies and logits' gradient (for a
    /// weighted loss with a zero weight, as masked positions have), with and without a
    /// temperature.
    #[test]
    fn fused_matches_the_composed_ops() {
        let (logits, targets) = inputs();
        let w =
            Tensor::from_vec((0..10).map(|i| if i == 4 { 0.0 } else { i as f32 * 0.3 - 1.0 }).collect::<Vec<f32>>(), (2, 5), &Device::Cpu).unwrap();
        for temperature in [1.0, 0.7] {
            let (lp, h) = token_logprobs_and_entropy(logits.as_tensor(), &targets, temperature).unwrap();
            let (lp_ref, h_ref) = composed(logits.as_tensor(), &targets, 1.0 / temperature).unwrap();
            let g = (lp.clone() * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (lp_ref.clone() * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (what, a, b) in [
                ("log-probs", flat(&lp), flat(&lp_ref)),
                ("entropy", flat(&h), flat(&h_ref)),
                ("gradient", flat(g.get(logits.as_tensor()).unwrap()), flat(g_ref.get(logits.as_tensor()).unwrap())),
            ] {
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "T={temperature} {what}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error() {
        let (logits, _) = inputs();
        let bad = Tensor::from_vec(vec![37u32; 10], (2, 5), &Device::Cpu).unwrap();
        let err = token_logprobs_and_entropy(logits.as_tensor(), &bad, 1.0).unwrap_err();
        assert!(format!("{err:#}").contains("outside the vocabulary"), "{err:#}");
    }
}
