//! Perplexity of a text under a model, in llama.cpp's `llama-perplexity` scheme so the numbers
//! compare (`sigmaforge model perplexity`): the text's tokens are cut into non-overlapping
//! chunks of `ctx` tokens (a shorter tail is dropped); with a BOS token, the first token of each
//! chunk is replaced by it, as llama.cpp does; each chunk is evaluated on its own, and only its
//! second half is scored: the logits at positions `ctx/2 .. ctx-1` predict the tokens after them,
//! `ctx - 1 - ctx/2` tokens per chunk (the first half gives every scored token at least `ctx/2`
//! tokens of context). Mean NLL is in nats per scored token; perplexity is its exponential.

use anyhow::{Result, bail, ensure};
use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::model::{AdapterMode, CausalLm, token_logprobs};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerplexityReport {
    /// Tokens of the text (BOS included when the tokenizer adds one).
    pub tokens: usize,
    pub ctx: usize,
    pub chunks: usize,
    /// Tokens whose NLL counts: `chunks × (ctx - 1 - ctx/2)`.
    pub scored: usize,
    /// Mean negative log-likelihood, nats per scored token.
    pub mean_nll: f64,
    pub perplexity: f64,
    /// Mean NLL of each chunk's scored tokens.
    pub chunk_nll: Vec<f64>,
}

/// Scores `tokens` (see the module docs). `bos`: the id that replaces each chunk's first token,
/// when the tokenizer starts texts with one.
pub fn perplexity(model: &CausalLm, tokens: &[u32], ctx: usize, bos: Option<u32>) -> Result<PerplexityReport> {
    ensure!(ctx >= 4, "the context size must be at least 4 tokens, got {ctx}");
    let max = model.config().max_position_embeddings;
    ensure!(ctx <= max, "the context size {ctx} is longer than the model's {max} positions");
    let chunks = tokens.len() / ctx;
    if chunks == 0 {
        bail!("the text has {} tokens, fewer than one chunk of {ctx}; use a smaller --ctx or a longer text", tokens.len());
    }
    let first = ctx / 2;
    let mut total = 0.0f64;
    let mut chunk_nll = Vec::with_capacity(chunks);
    for c in 0..chunks {
        let mut window = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(bos) = bos {
            window[0] = bos;
        }
        let nll = window_nll(model, &window, first)?;
        let sum: f64 = nll.iter().sum();
        total += sum;
        chunk_nll.push(sum / nll.len() as f64);
    }
    let scored = chunks * (ctx - 1 - first);
    let mean_nll = total / scored as f64;
    Ok(PerplexityReport { tokens: tokens.len(), ctx, chunks, scored, mean_nll, perplexity: mean_nll.exp(), chunk_nll })
}

/// NLL of `window[j + 1]` given `window[..=j]`, for `j` in `first .. len-1`.
pub fn window_nll(model: &CausalLm, window: &[u32], first: usize) -> Result<Vec<f64>> {
    let t = window.len();
    ensure!(first + 1 < t, "nothing to score: position {first} of a {t}-token window");
    let device = model.device();
    let ids = Tensor::new(window, device)?.unsqueeze(0)?;
    let mask = Tensor::ones((1, t), DType::U32, device)?;
    // Only the scored positions go through the vocabulary projection.
    let hidden = model.forward_hidden(&ids, &mask, None, AdapterMode::Disabled)?.narrow(1, first, t - 1 - first)?.contiguous()?;
    let logits = model.logits(&hidden, AdapterMode::Disabled)?.to_dtype(DType::F32)?;
    let targets = Tensor::new(&window[first + 1..], device)?.unsqueeze(0)?;
    let logp: Vec<f32> = token_logprobs(&logits, &targets)?.squeeze(0)?.to_vec1()?;
    Ok(logp.into_iter().map(|lp| -f64::from(lp)).collect())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::ModelConfig;

    fn tiny() -> CausalLm {
        CausalLm::random(&ModelConfig::tiny_qwen3(), None, 3, DType::F32, &Device::Cpu).unwrap()
    }

    /// The scheme by hand: full-sequence logits of each chunk, log-softmax, second half.
    #[test]
    fn chunks_score_their_second_half_like_llama_perplexity() {
        let model = tiny();
        let vocab = model.config().vocab_size as u32;
        let tokens: Vec<u32> = (0..37u32).map(|i| (i * 7 + 3) % vocab).collect();
        let r = perplexity(&model, &tokens, 16, Some(2)).unwrap();
        assert_eq!((r.tokens, r.chunks, r.scored), (37, 2, 2 * 7));
        let mut total = 0.0;
        for c in 0..2 {
            let mut w = tokens[c * 16..(c + 1) * 16].to_vec();
            w[0] = 2;
            let ids = Tensor::new(w.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let mask = Tensor::ones((1, 16), DType::U32, &Device::Cpu).unwrap();
            let logits = model.forward(&ids, &mask, None, AdapterMode::Disabled).unwrap().squeeze(0).unwrap();
            let logp = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap();
            for j in 8..15 {
                total -= f64::from(logp[j][w[j + 1] as usize]);
            }
        }
        assert!((r.mean_nll - total / 14.0).abs() < 1e-5, "{} vs {}", r.mean_nll, total / 14.0);
        assert!((r.perplexity - r.mean_nll.exp()).abs() < 1e-9);
        // Without BOS the chunks keep their own first token, and the score changes.
        let plain = perplexity(&model, &tokens, 16, None).unwrap();
        assert_ne!(plain.mean_nll, r.mean_nll);
    }

    #[test]
    fn too_short_texts_and_bad_contexts_are_refused() {
        let model = tiny();
        let err = perplexity(&model, &[1, 2, 3], 16, None).unwrap_err().to_string();
        assert!(err.contains("3 tokens") && err.contains("--ctx"), "{err}");
        let err = perplexity(&model, &[1; 100_000], 1 << 20, None).unwrap_err().to_string();
        assert!(err.contains("longer than the model"), "{err}");
        assert!(perplexity(&model, &[1; 10], 2, None).is_err());
    }
}
