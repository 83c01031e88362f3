//! CPU throughput of the differentiable model (BENCHMARKS.md, "Trainer: model throughput").
//! Run: `cargo bench -p sigmaforge-trainer --bench model_throughput`
//! (`.cargo/config.toml` builds with `-C target-cpu=native`; `RUSTFLAGS=""` gives the baseline
//! x86-64 build for comparison.)
//!
//! Shapes: the 10.5M-parameter Qwen3 of `ModelConfig::qwen3_10m()`, f32.
//! - forward + backward: B = 8, L = 256, loss = Σ advantage_row · log p(token) over all
//!   next-token positions (the policy-gradient part of the GRPO loss, which dominates its cost);
//! - decoding: B = 8 rows, 32-token prompts, 95 new tokens, greedy, KV cache (`generate`).
//!
//! With `SIGMAFORGE_BENCH_SMOLLM2=1` and the default model in the model cache, the same two
//! measurements run on SmolLM2-135M (LoRA r=16 on all linear layers, B = 4, L = 128).
//!
//! `model_throughput update` times only SmolLM2's GRPO update micro-batch; `model_throughput
//! memory` runs six of them with changing lengths and prints the resident and peak memory after
//! each step's `release_free_memory` (what the allocator holds over a run).
//!
//! A plain timing harness (medians of repeated runs), like the other benches of the project:
//! criterion's build cost is large on the 2-core VM and each sample here takes seconds.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use sigmaforge_model::generate::{SamplingConfig, generate};
use sigmaforge_model::load::{self, LoadOptions, Tokenizer};
use sigmaforge_model::lora::LoraConfig;
use sigmaforge_model::model::{AdapterMode, BaseQuant, CausalLm, MemoryOptions, ModelConfig, token_logprobs};
use sigmaforge_model::rng::SamplerRng;
use sigmaforge_model::testing::tiny_tokenizer;

/// The CLI's allocator, so that the numbers are the CLI's.
#[global_allocator]
static ALLOCATOR: sigmaforge_model::process::Allocator = sigmaforge_model::process::Allocator;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn random_ids(rng: &mut SamplerRng, n: usize, lo: u32, hi: u32) -> Vec<u32> {
    (0..n).map(|_| lo + rng.below((hi - lo) as usize) as u32).collect()
}

/// The forward + backward benchmarks' batch: random ids [b, l], a full mask, one advantage per row.
fn loss_inputs(model: &CausalLm, b: usize, l: usize) -> anyhow::Result<(Tensor, Tensor, Tensor)> {
    let mut rng = SamplerRng::new(1);
    let vocab = model.config().vocab_size as u32;
    let input = Tensor::from_vec(random_ids(&mut rng, b * l, 3, vocab), (b, l), &Device::Cpu)?;
    let mask = Tensor::ones((b, l), DType::U32, &Device::Cpu)?;
    let adv: Vec<f32> = (0..b).map(|_| rng.normal() as f32).collect();
    Ok((input, mask, Tensor::from_vec(adv, (b, 1), &Device::Cpu)?))
}

fn fwd_bwd(model: &CausalLm, b: usize, l: usize, runs: usize) -> anyhow::Result<(Duration, Duration)> {
    let (input, mask, adv) = loss_inputs(model, b, l)?;
    let mut fwd = Vec::new();
    let mut total = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let logits = model.forward(&input, &mask, None, AdapterMode::Enabled)?;
        let lp = token_logprobs(&logits.narrow(1, 0, l - 1)?, &input.narrow(1, 1, l - 1)?)?;
        let loss = lp.broadcast_mul(&adv)?.mean_all()?.neg()?;
        let _ = loss.to_scalar::<f32>()?;
        fwd.push(start.elapsed());
        let grads = loss.backward()?;
        drop(grads);
        total.push(start.elapsed());
    }
    Ok((median(fwd), median(total)))
}

/// The same loss through `backward_bounded` (training.memory): activation checkpointing and
/// the vocabulary projection in chunks of `chunk` positions. Returns the median time.
fn fwd_bwd_bounded(model: &CausalLm, b: usize, l: usize, chunk: usize, runs: usize) -> anyhow::Result<Duration> {
    fwd_bwd_bounded_window(model, b, l, l - 1, chunk, runs)
}

/// The default GRPO update's shape on SmolLM2-135M: full fine-tuning, a micro-batch of 4 rows of
/// 368 positions (~208 prompt + 160 completion), the loss on the last 160, with the default
/// memory savers.
fn smollm2_update() -> anyhow::Result<()> {
    let path = load::default_models_dir().join(load::DEFAULT_MODEL_FILE);
    // The cost depends on the shape only: without the GGUF (a machine that never fetched it),
    // random weights of SmolLM2-135M's shape.
    let (model, weights) = if path.exists() {
        (load::load_model(&path, &LoadOptions::default())?.model, "GGUF weights")
    } else {
        (CausalLm::random(&ModelConfig::smollm2_135m(), None, 0, DType::F32, &Device::Cpu)?, "random weights, no GGUF in the model cache")
    };
    let (b, l, window) = (4, 368, 160);
    let t = fwd_bwd_bounded_window(&model, b, l, window, 64, 3)?;
    println!(
        "smollm2-135m ({weights}) full FT, GRPO update micro-batch (checkpointing, 64-position logits chunks): forward+backward {:.2} s -> {:.0} positions/s  [B={b}, L={l}, loss on the last {window}]",
        t.as_secs_f64(),
        (b * l) as f64 / t.as_secs_f64()
    );
    Ok(())
}

/// What the allocator holds over a run: SmolLM2 update micro-batches whose length changes from
/// step to step (as a GRPO step's rows do), each followed by `release_free_memory` as the
/// trainers do, with the resident and peak memory after each (`/proc/self/status`).
fn smollm2_memory() -> anyhow::Result<()> {
    let model = CausalLm::random(&ModelConfig::smollm2_135m(), None, 0, DType::F32, &Device::Cpu)?;
    let status = |field: &str| -> f64 {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kb = text.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
        kb.unwrap_or(f64::NAN) / 1e6
    };
    for (step, l) in [368, 300, 420, 336, 392, 368].into_iter().enumerate() {
        let t = fwd_bwd_bounded_window(&model, 4, l, 160, 64, 1)?;
        let released = sigmaforge_model::process::release_free_memory();
        println!(
            "step {step}: L={l} {:.2} s; after the release (done: {released}) resident {:.2} GB, peak {:.2} GB",
            t.as_secs_f64(),
            status("VmRSS:"),
            status("VmHWM:")
        );
    }
    Ok(())
}

/// [`fwd_bwd_bounded`] with the loss on the last `window` positions only (a GRPO micro-batch:
/// prompt, then completion).
fn fwd_bwd_bounded_window(model: &CausalLm, b: usize, l: usize, window: usize, chunk: usize, runs: usize) -> anyhow::Result<Duration> {
    let (input, mask, adv) = loss_inputs(model, b, l)?;
    let options = MemoryOptions { activation_checkpointing: true, logits_chunk: chunk, ..Default::default() };
    let start_pos = l - 1 - window;
    let mut total = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        model.backward_bounded(
            &input,
            &mask,
            AdapterMode::Enabled,
            (start_pos, window),
            options,
            |logits, range| {
                let targets = input.narrow(1, start_pos + 1 + range.start, range.len())?;
                let lp = token_logprobs(logits, &targets)?;
                Ok((lp.broadcast_mul(&adv)?.sum_all()? / (-((b * window) as f64)))?)
            },
            |_grads, _segment_end| Ok(()),
        )?;
        total.push(start.elapsed());
    }
    Ok(median(total))
}

fn decode(model: &CausalLm, tok: &Tokenizer, b: usize, prompt: usize, new: usize, runs: usize) -> anyhow::Result<(Duration, usize)> {
    let mut rng = SamplerRng::new(2);
    let vocab = model.config().vocab_size as u32;
    let prompts: Vec<Vec<u32>> = (0..b).map(|_| random_ids(&mut rng, prompt, 4, vocab.min(tok.vocab_size() as u32))).collect();
    let cfg = SamplingConfig { temperature: 0.0, max_new_tokens: new, num_completions: 1, ..Default::default() };
    let mut times = Vec::new();
    let mut tokens = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let out = generate(model, tok, &prompts, &cfg, &mut SamplerRng::new(0), AdapterMode::Enabled)?;
        times.push(start.elapsed());
        tokens = out.iter().map(|r| r.completion_ids.len()).sum();
    }
    Ok((median(times), tokens))
}

fn report_fwd_bwd(label: &str, b: usize, l: usize, (fwd, total): (Duration, Duration)) {
    let toks = (b * l) as f64;
    println!(
        "{label}: forward {:.2} s ({:.0} tok/s), forward+backward {:.2} s -> {:.0} tok/s  [B={b}, L={l}]",
        fwd.as_secs_f64(),
        toks / fwd.as_secs_f64(),
        total.as_secs_f64(),
        toks / total.as_secs_f64()
    );
}

fn main() -> anyhow::Result<()> {
    // As the CLI does (`SIGMAFORGE_MALLOC_DEFAULTS=1` / `SIGMAFORGE_KEEP_DENORMALS=1` measure
    // without either setting).
    let tuned = sigmaforge_model::process::tune_for_tensors();
    println!("threads: {}; {tuned:?}", candle_core::utils::get_num_threads());
    // `model_throughput update`: only the SmolLM2 GRPO update micro-batch (for profiling).
    let only_update = std::env::args().skip(1).any(|a| a == "update");
    if only_update {
        return smollm2_update();
    }
    // `model_throughput memory`: the process's memory over update steps of changing lengths.
    if std::env::args().skip(1).any(|a| a == "memory") {
        return smollm2_memory();
    }
    let cfg = ModelConfig::qwen3_10m();
    let model = CausalLm::random(&cfg, None, 0, DType::F32, &Device::Cpu)?;
    println!("qwen3_10m: {} parameters", model.num_parameters());
    let plain = fwd_bwd(&model, 8, 256, 3)?;
    report_fwd_bwd("qwen3_10m full FT", 8, 256, plain);
    let bounded = fwd_bwd_bounded(&model, 8, 256, 64, 3)?;
    println!(
        "qwen3_10m full FT, activation checkpointing + 64-position logits chunks: forward+backward {:.2} s -> {:.0} tok/s ({:.2}x the plain time)  [B=8, L=256]",
        bounded.as_secs_f64(),
        (8 * 256) as f64 / bounded.as_secs_f64(),
        bounded.as_secs_f64() / plain.1.as_secs_f64()
    );
    let tok = tiny_tokenizer(cfg.vocab_size)?;
    let (t, n) = decode(&model, &tok, 8, 32, 95, 3)?;
    println!(
        "qwen3_10m decode: {n} tokens in {:.2} s -> {:.0} tok/s  [B=8, prompt 32, 95 new, greedy, KV cache, prefill included]",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );

    if std::env::var_os("SIGMAFORGE_BENCH_SMOLLM2").is_some() {
        let path = load::default_models_dir().join(load::DEFAULT_MODEL_FILE);
        smollm2_update()?;
        let lora = LoraConfig { rank: 16, alpha: 32.0, target_modules: vec!["all-linear".into()], target_parameters: vec![] };
        // The frozen base dense (f32) and kept quantised (model.base_quant), one after the other.
        for base_quant in [BaseQuant::Dequantize, BaseQuant::Q8_0] {
            let start = Instant::now();
            let loaded = load::load_model(&path, &LoadOptions { lora: Some(lora.clone()), base_quant, ..Default::default() })?;
            let label = format!("smollm2-135m LoRA r16, base {base_quant:?}");
            println!("{label}: loaded in {:.1} s", start.elapsed().as_secs_f64());
            report_fwd_bwd(&label, 4, 128, fwd_bwd(&loaded.model, 4, 128, 3)?);
            let (t, n) = decode(&loaded.model, &loaded.tokenizer, 8, 32, 95, 2)?;
            println!(
                "{label} decode: {n} tokens in {:.2} s -> {:.0} tok/s  [B=8, prompt 32, up to 95 new, greedy]",
                t.as_secs_f64(),
                n as f64 / t.as_secs_f64()
            );
        }
    }
    Ok(())
}
