//! GPU throughput of a GRPO step and of decoding for a Qwen3-0.6B-shaped model with random
//! weights, in bf16 — the Rust half of `scripts/gpu-check.sh`, whose Python half
//! (`scripts/gpu-check/torch_bench.py`) measures the same work with PyTorch + transformers on
//! the same card; the script prints the ratio.
//!
//! Run: `cargo bench -p sigmaforge-trainer --features cuda --bench gpu_throughput`
//! Without the `cuda` feature (or without a GPU) it says so and exits non-zero.
//!
//! The work, identical on both sides:
//! - GRPO step: B = 8 sequences of 128 prompt + 384 completion tokens; forward, f32
//!   log-softmax of the completion positions, clipped-ratio policy loss (token aggregation,
//!   β = 0), backward, global-norm clipping, AdamW update (ours keeps f32 moments and f32
//!   master weights; PyTorch's fused AdamW updates the bf16 weights with fp32 math).
//! - Decoding: B = 8 rows, 32-token prompts, 128 new tokens, greedy, KV cache, prefill
//!   included.
//!
//! Each figure is the median of 5 timed runs after 2 warm-ups. Lines starting with `{` are
//! JSON for the comparison.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use sigmaforge_model::device::select_device;
use sigmaforge_model::generate::{SamplingConfig, generate};
use sigmaforge_model::model::{AdapterMode, CausalLm, ModelConfig};
use sigmaforge_model::rng::SamplerRng;
use sigmaforge_model::testing::tiny_tokenizer;
use sigmaforge_trainer::grpo::{self, LossAggregation, LossInputs, LossNormalizer, LossParams};
use sigmaforge_trainer::optim::{AdamW, AdamWParams, GradAccumulator};

const B: usize = 8;
const PROMPT: usize = 128;
const COMPLETION: usize = 384;
const DECODE_PROMPT: usize = 32;
const DECODE_NEW: usize = 128;
const WARMUP: usize = 2;
const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn random_ids(rng: &mut SamplerRng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| 4 + rng.below(vocab - 4) as u32).collect()
}

fn grpo_step(model: &CausalLm, opt: &mut AdamW, device: &Device, rng: &mut SamplerRng) -> Result<()> {
    let vocab = model.config().vocab_size;
    let width = PROMPT + COMPLETION - 1;
    let input = Tensor::from_vec(random_ids(rng, B * width, vocab), (B, width), device)?;
    let attn = Tensor::ones((B, width), DType::U32, device)?;
    let targets = Tensor::from_vec(random_ids(rng, B * COMPLETION, vocab), (B, COMPLETION), device)?;
    let mask = Tensor::ones((B, COMPLETION), DType::F32, device)?;
    let adv: Vec<f32> = (0..B).map(|_| rng.normal() as f32).collect();
    let adv = Tensor::from_vec(adv, B, device)?;

    let hidden = model.forward_hidden(&input, &attn, None, AdapterMode::Enabled)?;
    let h = hidden.narrow(1, PROMPT - 1, COMPLETION)?;
    let logits = model.logits(&h, AdapterMode::Enabled)?.to_dtype(DType::F32)?;
    let (logp, _entropy) = grpo::token_logprobs(&logits, &targets, 1.0)?;
    let old = logp.detach();
    let params = LossParams { epsilon_low: 0.2, epsilon_high: 0.28, beta: 0.0, aggregation: LossAggregation::Token };
    let norm = LossNormalizer::for_batch(LossAggregation::Token, &[COMPLETION; B], COMPLETION);
    let inputs = LossInputs { logp: &logp, old_logp: &old, ref_logp: None, mask: &mask, advantages: &adv };
    let (loss, _) = grpo::policy_loss(&inputs, &params, &norm)?;
    let grads = loss.backward()?;
    let mut acc = GradAccumulator::new(opt.params().len());
    acc.add(&grads, opt.params())?;
    drop(grads);
    acc.clip_global_norm(1.0)?;
    opt.step(&acc, 1e-6)?;
    device.synchronize()?;
    Ok(())
}

fn main() -> Result<()> {
    let (device, desc) = select_device("cuda").context("the GPU benchmark needs a CUDA device and the `cuda` feature")?;
    println!("device: {desc}");
    let cfg = ModelConfig::qwen3_0_6b();
    let start = Instant::now();
    let model = CausalLm::random(&cfg, None, 0, DType::BF16, &device)?;
    println!("qwen3-0.6b shape: {} parameters, random init in {:.1} s", model.num_parameters(), start.elapsed().as_secs_f64());

    let mut opt = AdamW::new(model.trainable_vars(), AdamWParams::default())?;
    let mut rng = SamplerRng::new(1);
    let mut times = Vec::new();
    for i in 0..WARMUP + RUNS {
        let t = Instant::now();
        grpo_step(&model, &mut opt, &device, &mut rng)?;
        if i >= WARMUP {
            times.push(t.elapsed());
        }
    }
    let step = median(times);
    let tokens = (B * (PROMPT + COMPLETION)) as f64;
    println!("GRPO step (full FT, bf16, B={B}, {PROMPT}+{COMPLETION} tokens): {step:.3} s, {:.0} tokens/s", tokens / step);
    println!("{{\"impl\": \"sigmaforge\", \"what\": \"grpo_step\", \"seconds\": {step}, \"tokens_per_s\": {}}}", tokens / step);
    drop(opt);

    let tok = tiny_tokenizer(cfg.vocab_size)?;
    let prompts: Vec<Vec<u32>> = (0..B).map(|_| random_ids(&mut rng, DECODE_PROMPT, cfg.vocab_size)).collect();
    // Only id 1 (the test tokenizer's eos) could stop a row early; the figure counts the tokens
    // actually generated. PyTorch decodes all 128 (min_new_tokens).
    let sampling = SamplingConfig { temperature: 0.0, max_new_tokens: DECODE_NEW, num_completions: 1, ..Default::default() };
    let mut times = Vec::new();
    let mut generated = 0;
    for i in 0..WARMUP + RUNS {
        let t = Instant::now();
        let out = generate(&model, &tok, &prompts, &sampling, &mut SamplerRng::new(0), AdapterMode::Enabled)?;
        device.synchronize()?;
        if i >= WARMUP {
            times.push(t.elapsed());
            generated = out.iter().map(|r| r.completion_ids.len()).sum();
        }
    }
    let decode = median(times);
    println!(
        "decoding (bf16, B={B}, prompt {DECODE_PROMPT}, {DECODE_NEW} new, greedy): {decode:.3} s, {generated} tokens, {:.0} tokens/s",
        generated as f64 / decode
    );
    println!("{{\"impl\": \"sigmaforge\", \"what\": \"decode\", \"seconds\": {decode}, \"tokens_per_s\": {}}}", generated as f64 / decode);
    Ok(())
}
