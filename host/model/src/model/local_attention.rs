//! The attention variants GPT-OSS adds to the shared attention: sliding-window masks and
//! attention sinks (both differentiable; the mask is a constant).

use anyhow::{Result, bail};
use candle_core::{D, DType, Device, Tensor};

/// Same value as the causal mask's (see `ops`): finite, so an all-masked row cannot give NaN.
const MASKED: f64 = -1e9;

/// Additive causal + padding + sliding-window mask [B, 1, T, past + T]: a query at position p
/// sees the real keys at positions p - window + 1 ..= p. Positions count real tokens (as the
/// RoPE position ids do), so left padding does not shrink the window; transformers counts
/// sequence indices, which is the same for left-padded rows.
pub fn sliding_mask(attention_mask: &Tensor, past: usize, t: usize, window: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    if window == 0 {
        bail!("sliding_window must be positive");
    }
    let rows = attention_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let s = past + t;
    let mut mask = Vec::with_capacity(rows.len() * t * s);
    for row in &rows {
        let mut count = 0usize;
        let pos: Vec<usize> = row
            .iter()
            .map(|&m| {
                count += usize::from(m == 1.0);
                count.saturating_sub(1)
            })
            .collect();
        for qi in past..s {
            for (kj, &m) in row.iter().enumerate() {
                let visible = kj <= qi && m == 1.0 && pos[qi] - pos[kj] < window;
                mask.push(if visible { 0.0 } else { MASKED });
            }
        }
    }
    Ok(Tensor::from_vec(mask, (rows.len(), 1, t, s), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

/// Softmax over the keys with one extra per-head "sink" logit that takes probability mass and
/// is then dropped (GPT-OSS's learned sinks): scores [B, H, T, S], sinks [H] -> [B, H, T, S].
pub fn softmax_with_sinks(scores: &Tensor, sinks: &Tensor) -> Result<Tensor> {
    let (b, h, t, s) = scores.dims4()?;
    let sink = sinks.to_dtype(scores.dtype())?.reshape((1, h, 1, 1))?.broadcast_as((b, h, t, 1))?;
    let combined = Tensor::cat(&[scores, &sink.contiguous()?], D::Minus1)?;
    // Generic softmax (it subtracts the row max, as transformers does before its softmax).
    let probs = candle_nn::ops::softmax(&combined, D::Minus1)?;
    Ok(probs.narrow(D::Minus1, 0, s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_real_tokens() {
        let mask = Tensor::new(&[[0u32, 1, 1, 1, 1]], &Device::Cpu).unwrap();
        let m = sliding_mask(&mask, 0, 5, 2, DType::F32, &Device::Cpu).unwrap().squeeze(0).unwrap().squeeze(0).unwrap();
        let seen: Vec<Vec<bool>> = m.to_vec2::<f32>().unwrap().iter().map(|r| r.iter().map(|&v| v == 0.0).collect()).collect();
        // Query 4 (4th real token) sees itself and token 3; token 1 (first real) sees only itself.
        assert_eq!(seen[4], vec![false, false, false, true, true]);
        assert_eq!(seen[1], vec![false, true, false, false, false]);
        // With a cache: the last query alone, same row.
        let last = sliding_mask(&mask, 4, 1, 2, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(last.dims(), &[1, 1, 1, 5]);
        let row: Vec<bool> = last.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&v| v == 0.0).collect();
        assert_eq!(row, seen[4]);
    }

    #[test]
    fn sinks_take_mass_and_vanish_at_minus_infinity() {
        let scores = Tensor::new(&[0f64, 0.0, 0.0], &Device::Cpu).unwrap().reshape((1, 1, 1, 3)).unwrap();
        // A sink logit of ln 3 equals the three keys' total: each key keeps 1/6.
        let p = softmax_with_sinks(&scores, &Tensor::new(&[3f64.ln()], &Device::Cpu).unwrap()).unwrap();
        for v in p.flatten_all().unwrap().to_vec1::<f64>().unwrap() {
            assert!((v - 1.0 / 6.0).abs() < 1e-12, "{v}");
        }
        let p = softmax_with_sinks(&scores, &Tensor::new(&[-1e30f64], &Device::Cpu).unwrap()).unwrap();
        let sum = p.sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!((sum - 1.0).abs() < 1e-12);
    }
}
