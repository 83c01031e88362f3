//! Differentiable building blocks (primitive candle ops only; see the module docs of `model`).

use anyhow::{Result, bail};
use candle_core::{D, DType, Device, Tensor};

use super::ModelConfig;

/// Additive mask value. Finite (not -inf) so that a query row whose keys are all padding gets a
/// uniform softmax instead of NaN.
const MASKED: f64 = -1e9;

/// RMSNorm over the last dim, written out so that it has a backward pass
/// (candle_nn's fused `rms_norm` has none).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(weight)?)
}

/// [`rms_norm`], or candle's fused kernel (no backward) when `fused`: the generation path.
pub fn rms_norm_maybe_fused(x: &Tensor, weight: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    if fused { Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)?) } else { rms_norm(x, weight, eps) }
}

/// [`apply_rope`], or candle's fused rotate-half kernel (no backward) when `fused`.
pub fn apply_rope_maybe_fused(x: &Tensor, cos: &Tensor, sin: &Tensor, fused: bool) -> Result<Tensor> {
    if !fused {
        return apply_rope(x, cos, sin);
    }
    // [B, 1, T, hd/2] -> [B, T, hd/2]: one row of positions per batch row.
    let (b, _, t, half) = cos.dims4()?;
    let cos = cos.reshape((b, t, half))?.contiguous()?;
    let sin = sin.reshape((b, t, half))?.contiguous()?;
    Ok(candle_nn::rotary_emb::rope(x, &cos, &sin)?)
}

/// cos/sin tables [max_position_embeddings, head_dim / 2], computed in f64 (YaRN-scaled when
/// the config says so).
pub fn rope_tables(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let n = cfg.max_position_embeddings;
    let (inv_freq, scale) = super::rope_scaling::rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for f in &inv_freq {
            let a = p as f64 * f;
            cos.push(a.cos() * scale);
            sin.push(a.sin() * scale);
        }
    }
    let cos = Tensor::from_vec(cos, (n, half), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
    let sin = Tensor::from_vec(sin, (n, half), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
    Ok((cos, sin))
}

/// Hugging Face ("rotate half") RoPE on x [B, H, T, hd] with cos/sin [B, 1, T, hd/2].
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[&a, &b], D::Minus1)?)
}

/// From a [B, past + T] 0/1 attention mask: the additive causal + key-padding mask
/// [B, 1, T, past + T] and the position id of each new token (row-major [B * T]).
pub fn mask_and_positions(attention_mask: &Tensor, past: usize, t: usize, dtype: DType, device: &Device) -> Result<(Tensor, Vec<u32>)> {
    let rows = attention_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let s = past + t;
    let mut mask = Vec::with_capacity(rows.len() * t * s);
    let mut positions = Vec::with_capacity(rows.len() * t);
    for (r, row) in rows.iter().enumerate() {
        let mut count = 0u32;
        let mut pos_of = Vec::with_capacity(s);
        for &m in row {
            if m != 0.0 && m != 1.0 {
                bail!("attention_mask row {r} holds {m}; only 0 and 1 are allowed");
            }
            if m == 1.0 {
                count += 1;
            }
            pos_of.push(count.saturating_sub(1));
        }
        positions.extend_from_slice(&pos_of[past..]);
        for qi in 0..t {
            let q_abs = past + qi;
            for (kj, &m) in row.iter().enumerate() {
                mask.push(if kj <= q_abs && m == 1.0 { 0.0 } else { MASKED });
            }
        }
    }
    let mask = Tensor::from_vec(mask, (rows.len(), 1, t, s), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
    Ok((mask, positions))
}

/// log p(targets) under softmax(logits): logits [B, T, V], targets [B, T] (u32) -> [B, T].
/// Differentiable; fused on the CPU in f32 (`token_logprobs`), candle's log_softmax + gather
/// elsewhere. Callers shift: logits[:, t] predicts token t+1.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(super::token_logprobs::token_logprobs_and_entropy(logits, targets, 1.0)?.0)
}

/// Entropy of softmax(logits) per position: [B, T, V] -> [B, T].
pub fn token_entropy(logits: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let p = logp.exp()?;
    Ok((p * logp)?.sum(D::Minus1)?.neg()?)
}
