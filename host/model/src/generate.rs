//! Batched sampling of completions (rollouts) with a KV cache.
//!
//! Every prompt is repeated `num_completions` (G) times; rows are left-padded to a common length
//! and masked, so each row sees exactly its own prompt. Rows that stop are dropped from the batch
//! (and from the cache) so later decode steps only pay for live rows. The log-prob of every
//! sampled token is recorded for the GRPO importance ratio.

use anyhow::{Result, bail};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::load::Tokenizer;
use crate::model::{AdapterMode, CausalLm, KvCache};
pub use crate::rng::SamplerRng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling; 1.0 = off.
    #[serde(default = "one")]
    pub top_p: f64,
    /// 0 = off.
    #[serde(default)]
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Completions per prompt (G).
    #[serde(default = "one_usize")]
    pub num_completions: usize,
    /// Extra ids that end a completion, besides the tokenizer's eos ids.
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
}

fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 256, num_completions: 1, stop_token_ids: vec![] }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!("sampling.temperature must be >= 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("sampling.top_p must be in (0, 1], got {}", self.top_p);
        }
        if self.num_completions == 0 {
            bail!("sampling.num_completions must be at least 1");
        }
        Ok(())
    }

    /// The temperature the recorded log-probs are taken at: `log_softmax(logits / T)`.
    /// Greedy decoding records plain log-probs (T = 1). Recompute current log-probs the same way.
    pub fn logprob_temperature(&self) -> f64 {
        if self.temperature > 0.0 { self.temperature } else { 1.0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// Ended with a stop/eos token (included in `completion_ids`).
    Stop,
    /// Hit `max_new_tokens`.
    Length,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Index into the `prompts` slice; rollouts come prompt-major, G consecutive per prompt.
    pub prompt_index: usize,
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    /// Per completion token: `log_softmax(logits / T)[token]`, T = `logprob_temperature()`.
    pub logprobs: Vec<f32>,
    /// Decoded completion with special tokens skipped.
    pub text: String,
    pub finish_reason: FinishReason,
}

/// Sample `cfg.num_completions` completions for every prompt (token ids, e.g. a rendered chat
/// template). Deterministic for a given `rng` state.
pub fn generate(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    rng: &mut SamplerRng,
    adapters: AdapterMode,
) -> Result<Vec<Rollout>> {
    generate_until(model, tokenizer, prompts, cfg, &[], rng, adapters)
}

/// [`generate`] that also ends a completion as soon as its decoded text contains one of
/// `stop_strings` (e.g. `</tool_call>`), with [`FinishReason::Stop`]. Stop strings usually span
/// several tokens, so after each sampled token the row's last few tokens are decoded (special
/// tokens kept) and searched; the token that completes the string is kept in the completion.
pub fn generate_until(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    stop_strings: &[String],
    rng: &mut SamplerRng,
    adapters: AdapterMode,
) -> Result<Vec<Rollout>> {
    cfg.validate()?;
    if let Some(i) = stop_strings.iter().position(String::is_empty) {
        bail!("stop string {i} is empty");
    }
    let stop_window = StopWindow::new(stop_strings);
    let vocab = model.config().vocab_size as u32;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("prompt {i} is empty");
        }
        if let Some(bad) = p.iter().find(|&&t| t >= vocab) {
            bail!("prompt {i} holds token id {bad}, outside the model's vocabulary of {vocab}");
        }
    }
    let mut stop: Vec<u32> = tokenizer.eos_token_ids().to_vec();
    stop.extend(&cfg.stop_token_ids);
    let pad = tokenizer.pad_token_id().min(vocab - 1);

    let rows: Vec<usize> = (0..prompts.len()).flat_map(|p| std::iter::repeat_n(p, cfg.num_completions)).collect();
    let mut completions: Vec<Vec<u32>> = vec![Vec::new(); rows.len()];
    let mut logprobs: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
    let mut finish: Vec<FinishReason> = vec![FinishReason::Length; rows.len()];
    if rows.is_empty() || cfg.max_new_tokens == 0 {
        return finish_rollouts(tokenizer, prompts, rows, completions, logprobs, finish);
    }

    let device = model.device();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    // The prefill runs once per prompt, not once per completion: the G rows of a prompt start
    // from copies of its KV cache and last logits (a group of G rollouts shares its prompt).
    let mut ids = Vec::with_capacity(prompts.len() * width);
    let mut prompt_masks: Vec<Vec<u32>> = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let padding = width - prompt.len();
        ids.extend(std::iter::repeat_n(pad, padding).chain(prompt.iter().copied()));
        prompt_masks.push(std::iter::repeat_n(0, padding).chain(std::iter::repeat_n(1, prompt.len())).collect());
    }
    // Room for the longest prompt and every new token: the cache never reallocates.
    let mut cache = KvCache::with_capacity(model.config().num_hidden_layers, width + cfg.max_new_tokens);
    let input = Tensor::from_vec(ids, (prompts.len(), width), device)?;
    let mut logits = model.forward_last(&input, &mask_tensor(&prompt_masks, device)?, Some(&mut cache), adapters)?;
    let mut masks: Vec<Vec<u32>> = rows.iter().map(|&p| prompt_masks[p].clone()).collect();
    if cfg.num_completions > 1 {
        let copies: Vec<u32> = rows.iter().map(|&p| p as u32).collect();
        cache.select_rows(&copies)?;
        logits = logits.index_select(&Tensor::new(copies.as_slice(), device)?, 0)?;
    }
    // Batch position -> row index, for the rows still generating.
    let mut active: Vec<usize> = (0..rows.len()).collect();
    let t_lp = cfg.logprob_temperature();

    loop {
        let scores = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        for (pos, &row) in active.iter().enumerate() {
            let (token, lp) = sample(&scores[pos], cfg, t_lp, rng);
            completions[row].push(token);
            logprobs[row].push(lp);
            if stop.contains(&token) || stop_window.hit(tokenizer, &completions[row])? {
                finish[row] = FinishReason::Stop;
            } else if completions[row].len() < cfg.max_new_tokens {
                keep.push(pos);
                next.push(token);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            let idx: Vec<u32> = keep.iter().map(|&p| p as u32).collect();
            cache.select_rows(&idx)?;
            active = keep.iter().map(|&p| active[p]).collect();
            masks = keep.iter().map(|&p| std::mem::take(&mut masks[p])).collect();
        }
        for m in &mut masks {
            m.push(1);
        }
        let input = Tensor::from_vec(next, (active.len(), 1), device)?;
        logits = model.forward_last(&input, &mask_tensor(&masks, device)?, Some(&mut cache), adapters)?;
    }
    finish_rollouts(tokenizer, prompts, rows, completions, logprobs, finish)
}

/// Finds stop strings at the end of a growing completion.
struct StopWindow<'a> {
    strings: &'a [String],
    /// Tokens decoded per check: a string that the newest token completes ends within the last
    /// `len` bytes, and every token decodes to at least one byte, so `len + 1` tokens cover it
    /// (plus one for a token that only starts a multi-byte character).
    tokens: usize,
}

impl<'a> StopWindow<'a> {
    fn new(strings: &'a [String]) -> Self {
        Self { strings, tokens: strings.iter().map(String::len).max().unwrap_or(0) + 2 }
    }

    /// Whether the completion now contains a stop string. Earlier tokens never did (the row
    /// would have stopped), so any occurrence in the window is one the newest token completed.
    fn hit(&self, tokenizer: &Tokenizer, completion: &[u32]) -> Result<bool> {
        if self.strings.is_empty() {
            return Ok(false);
        }
        let tail = &completion[completion.len().saturating_sub(self.tokens)..];
        let text = tokenizer.decode(tail, false)?;
        Ok(self.strings.iter().any(|s| text.contains(s.as_str())))
    }
}

fn finish_rollouts(
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    rows: Vec<usize>,
    completions: Vec<Vec<u32>>,
    logprobs: Vec<Vec<f32>>,
    finish: Vec<FinishReason>,
) -> Result<Vec<Rollout>> {
    rows.into_iter()
        .zip(completions)
        .zip(logprobs)
        .zip(finish)
        .map(|(((p, completion_ids), logprobs), finish_reason)| {
            Ok(Rollout {
                prompt_index: p,
                prompt_ids: prompts[p].clone(),
                text: tokenizer.decode(&completion_ids, true)?,
                completion_ids,
                logprobs,
                finish_reason,
            })
        })
        .collect()
}

fn mask_tensor(masks: &[Vec<u32>], device: &candle_core::Device) -> Result<Tensor> {
    let width = masks.first().map(Vec::len).unwrap_or(0);
    let flat: Vec<u32> = masks.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (masks.len(), width), device)?)
}

/// Pick the next token from one row of logits; returns it with its log-prob under
/// `softmax(logits / t_lp)`.
fn sample(logits: &[f32], cfg: &SamplingConfig, t_lp: f64, rng: &mut SamplerRng) -> (u32, f32) {
    let logprob_of = |tok: usize| -> f32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = logits.iter().map(|&z| ((z as f64 - max) / t_lp).exp()).sum::<f64>().ln();
        ((logits[tok] as f64 - max) / t_lp - lse) as f32
    };
    if cfg.temperature == 0.0 {
        let mut best = 0;
        for (i, &z) in logits.iter().enumerate() {
            if z > logits[best] {
                best = i;
            }
        }
        return (best as u32, logprob_of(best));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut cand: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &z)| (i, ((z as f64 - max) / cfg.temperature).exp())).collect();
    if cfg.top_k > 0 && cfg.top_k < cand.len() {
        cand.select_nth_unstable_by(cfg.top_k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        cand.truncate(cfg.top_k);
    }
    if cfg.top_p < 1.0 {
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = cand.iter().map(|c| c.1).sum();
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            acc += c.1 / total;
            if acc >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
    }
    let total: f64 = cand.iter().map(|c| c.1).sum();
    let mut u = rng.next_f64() * total;
    let mut pick = cand[cand.len() - 1].0;
    for &(i, w) in &cand {
        if u < w {
            pick = i;
            break;
        }
        u -= w;
    }
    (pick as u32, logprob_of(pick))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f64, top_p: f64, top_k: usize) -> SamplingConfig {
        SamplingConfig { temperature, top_p, top_k, max_new_tokens: 4, num_completions: 1, stop_token_ids: vec![] }
    }

    #[test]
    fn greedy_picks_argmax_with_its_logprob() {
        let logits = [0.0f32, 3.0, 1.0];
        let (t, lp) = sample(&logits, &cfg(0.0, 1.0, 0), 1.0, &mut SamplerRng::new(0));
        assert_eq!(t, 1);
        let lse = (0f64.exp() + 3f64.exp() + 1f64.exp()).ln();
        assert!((lp as f64 - (3.0 - lse)).abs() < 1e-6);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [5.0f32, 4.9, 0.0, -1.0, 4.8];
        let mut rng = SamplerRng::new(3);
        for _ in 0..200 {
            let (t, _) = sample(&logits, &cfg(1.0, 1.0, 2), 1.0, &mut rng);
            assert!(t == 0 || t == 1, "{t}");
            // top-p 0.5: token 0 alone has ~36%, 0+1 ~69% -> only {0, 1} survive.
            let (t, _) = sample(&logits, &cfg(1.0, 0.5, 0), 1.0, &mut rng);
            assert!(t == 0 || t == 1, "{t}");
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logits = [0.0f32, (3f32).ln()]; // p = 0.25 / 0.75
        let mut rng = SamplerRng::new(9);
        let n = 20_000;
        let ones = (0..n).filter(|_| sample(&logits, &cfg(1.0, 1.0, 0), 1.0, &mut rng).0 == 1).count();
        assert!((ones as f64 / n as f64 - 0.75).abs() < 0.015, "{ones}");
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(cfg(-1.0, 1.0, 0).validate().is_err());
        assert!(cfg(1.0, 0.0, 0).validate().is_err());
        assert!(SamplingConfig { num_completions: 0, ..cfg(1.0, 1.0, 0) }.validate().is_err());
    }

    use crate::model::{CausalLm, ModelConfig, token_logprobs};
    use crate::testing::tiny_tokenizer;
    use candle_core::{Device, IndexOp};

    fn tiny() -> (CausalLm, Tokenizer) {
        let cfg = ModelConfig::tiny_qwen3();
        let model = CausalLm::random(&cfg, None, 21, DType::F32, &Device::Cpu).unwrap();
        (model, tiny_tokenizer(cfg.vocab_size).unwrap())
    }

    fn prompts() -> Vec<Vec<u32>> {
        vec![vec![2, 10, 11, 12, 13, 2], vec![2, 40, 2], vec![2, 7, 8, 9, 20, 21, 22, 23, 2]]
    }

    #[test]
    fn same_seed_same_rollouts_and_groups_are_prompt_major() {
        let (model, tok) = tiny();
        let cfg = SamplingConfig { temperature: 1.0, top_p: 0.95, top_k: 40, max_new_tokens: 8, num_completions: 3, stop_token_ids: vec![] };
        let a = generate(&model, &tok, &prompts(), &cfg, &mut SamplerRng::new(5), AdapterMode::Enabled).unwrap();
        let b = generate(&model, &tok, &prompts(), &cfg, &mut SamplerRng::new(5), AdapterMode::Enabled).unwrap();
        assert_eq!(a, b);
        let c = generate(&model, &tok, &prompts(), &cfg, &mut SamplerRng::new(6), AdapterMode::Enabled).unwrap();
        assert_ne!(a, c);
        assert_eq!(a.len(), 9);
        for (i, r) in a.iter().enumerate() {
            assert_eq!(r.prompt_index, i / 3);
            assert_eq!(r.prompt_ids, prompts()[i / 3]);
            assert_eq!(r.logprobs.len(), r.completion_ids.len());
            assert!(!r.completion_ids.is_empty() && r.completion_ids.len() <= 8);
            match r.finish_reason {
                FinishReason::Length => assert_eq!(r.completion_ids.len(), 8),
                FinishReason::Stop => assert_eq!(*r.completion_ids.last().unwrap(), 1),
            }
            assert!(r.logprobs.iter().all(|lp| lp.is_finite() && *lp <= 0.0));
        }
        // Completions within a group differ (sampling, not copies).
        assert!(a[0].completion_ids != a[1].completion_ids || a[1].completion_ids != a[2].completion_ids);
    }

    #[test]
    fn stop_tokens_end_completions() {
        let (model, tok) = tiny();
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 50,
            num_completions: 4,
            stop_token_ids: (4..64).filter(|t| t % 2 == 0).collect(),
        };
        let out = generate(&model, &tok, &prompts(), &cfg, &mut SamplerRng::new(1), AdapterMode::Enabled).unwrap();
        for r in &out {
            let last = *r.completion_ids.last().unwrap();
            assert_eq!(r.finish_reason, FinishReason::Stop, "{r:?}");
            assert!(last == 1 || (last >= 4 && last % 2 == 0));
            assert!(r.completion_ids[..r.completion_ids.len() - 1].iter().all(|t| !cfg.stop_token_ids.contains(t) && *t != 1));
        }
    }

    #[test]
    fn a_shared_prefill_gives_the_rollouts_of_separate_prompts() {
        // G completions of one prompt start from one prefill (copied rows); the same prompt
        // listed G times is prefilled G times. Same tokens, same log-probs.
        let (model, tok) = tiny();
        let cfg = SamplingConfig { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: 8, num_completions: 3, stop_token_ids: vec![] };
        let shared = generate(&model, &tok, &prompts(), &cfg, &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap();
        let repeated: Vec<Vec<u32>> = prompts().into_iter().flat_map(|p| std::iter::repeat_n(p, 3)).collect();
        let one_each = SamplingConfig { num_completions: 1, ..cfg };
        let separate = generate(&model, &tok, &repeated, &one_each, &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap();
        assert_eq!(shared.len(), separate.len());
        for (a, b) in shared.iter().zip(&separate) {
            assert_eq!(a.completion_ids, b.completion_ids);
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn batched_greedy_equals_one_prompt_at_a_time() {
        let (model, tok) = tiny();
        let cfg = SamplingConfig { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: 10, num_completions: 2, stop_token_ids: vec![] };
        let batched = generate(&model, &tok, &prompts(), &cfg, &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap();
        for (p, prompt) in prompts().iter().enumerate() {
            let single = generate(&model, &tok, std::slice::from_ref(prompt), &cfg, &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap();
            assert_eq!(single[0].completion_ids, batched[2 * p].completion_ids);
            assert_eq!(batched[2 * p].completion_ids, batched[2 * p + 1].completion_ids);
            for (x, y) in single[0].logprobs.iter().zip(&batched[2 * p].logprobs) {
                assert!((x - y).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn recorded_logprobs_match_a_full_forward_at_the_sampling_temperature() {
        let (model, tok) = tiny();
        let cfg = SamplingConfig { temperature: 0.7, top_p: 1.0, top_k: 0, max_new_tokens: 6, num_completions: 2, stop_token_ids: vec![] };
        let out = generate(&model, &tok, &prompts(), &cfg, &mut SamplerRng::new(3), AdapterMode::Enabled).unwrap();
        for r in &out {
            let seq: Vec<u32> = r.prompt_ids.iter().chain(&r.completion_ids).copied().collect();
            let n = seq.len();
            let input = Tensor::from_vec(seq.clone(), (1, n), &Device::Cpu).unwrap();
            let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
            let logits = (model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap() / 0.7).unwrap();
            let lp = token_logprobs(&logits.narrow(1, 0, n - 1).unwrap(), &input.narrow(1, 1, n - 1).unwrap()).unwrap();
            let p = r.prompt_ids.len();
            let expect = lp.i((0, p - 1..)).unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in expect.iter().zip(&r.logprobs) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    /// The decoder (in-place KV cache, grouped-query attention without k/v copies, fused
    /// inference kernels, one prefill shared by a prompt's rows, finished rows leaving the
    /// batch) picks the same greedy tokens as the plain path: the whole sequence through the
    /// differentiable forward, no cache, one token at a time, one prompt at a time.
    #[test]
    fn greedy_decoding_equals_the_uncached_reference_path() {
        for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama()] {
            let model = CausalLm::random(&cfg, None, 33, DType::F32, &Device::Cpu).unwrap();
            let tok = tiny_tokenizer(cfg.vocab_size).unwrap();
            let sampling = SamplingConfig { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: 24, num_completions: 2, stop_token_ids: vec![7] };
            let fast = generate(&model, &tok, &prompts(), &sampling, &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap();
            for (p, prompt) in prompts().iter().enumerate() {
                let mut seq = prompt.clone();
                let mut want = Vec::new();
                while want.len() < sampling.max_new_tokens {
                    let n = seq.len();
                    let input = Tensor::from_vec(seq.clone(), (1, n), &Device::Cpu).unwrap();
                    let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
                    let logits = model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap().i((0, n - 1)).unwrap();
                    let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
                    want.push(next);
                    seq.push(next);
                    if next == 1 || next == 7 {
                        break;
                    }
                }
                for g in 0..2 {
                    assert_eq!(fast[2 * p + g].completion_ids, want, "{:?} prompt {p} row {g}", cfg.family);
                }
            }
        }
    }

    #[test]
    fn bad_prompts_are_errors() {
        let (model, tok) = tiny();
        let cfg = SamplingConfig::default();
        let err = generate(&model, &tok, &[vec![]], &cfg, &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap_err();
        assert!(err.to_string().contains("prompt 0 is empty"));
        let err = generate(&model, &tok, &[vec![2, 999]], &cfg, &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap_err();
        assert!(err.to_string().contains("999"));
    }

    /// A stop string that spans several tokens ends the completion right after the token that
    /// completes it, in every row, and only there.
    #[test]
    fn stop_strings_spanning_tokens_end_completions() {
        let tok = crate::testing::chatml_byte_tokenizer().unwrap();
        let cfg = ModelConfig { vocab_size: crate::testing::CHATML_BYTE_VOCAB, ..ModelConfig::tiny_qwen3() };
        let model = CausalLm::random(&cfg, None, 5, DType::F32, &Device::Cpu).unwrap();
        let prompts = vec![tok.encode("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", false).unwrap()];
        let sampling = SamplingConfig { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: 40, num_completions: 2, stop_token_ids: vec![] };
        let free = generate(&model, &tok, &prompts, &sampling, &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap();
        let ids = &free[0].completion_ids;
        assert!(ids.len() >= 20, "the greedy run should not stop early: {ids:?}");
        // Three tokens from the middle of the greedy text, as a stop string (bytes: one token each).
        let stop = tok.decode(&ids[12..15], false).unwrap();
        let want = (1..=ids.len()).find(|&n| tok.decode(&ids[..n], false).unwrap().contains(&stop)).unwrap();
        let out =
            generate_until(&model, &tok, &prompts, &sampling, std::slice::from_ref(&stop), &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap();
        for r in &out {
            assert_eq!(r.finish_reason, FinishReason::Stop);
            assert_eq!(r.completion_ids, ids[..want], "stop {stop:?}");
            assert_eq!(r.logprobs, free[0].logprobs[..want]);
        }
        let err = generate_until(&model, &tok, &prompts, &sampling, &[String::new()], &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap_err();
        assert!(err.to_string().contains("stop string 0 is empty"), "{err}");
    }
}
