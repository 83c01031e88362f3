//! Decoding throughput of a real model on real prompts: the rollout half of a GRPO step.
//!
//! `scripts/bench-decode.sh` runs this next to llama.cpp on the same GGUF, prompts and token
//! budget (BENCHMARKS.md, "Decoding against llama.cpp"). Run alone:
//!
//! ```text
//! cargo run --release -p sigmaforge-model --example decode_bench -- \
//!     --model ~/.cache/sigmaforge/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --tasks tasks.jsonl --max-new-tokens 128 [--base-quant keep|q8_0|dequantize] \
//!     [--ids-out prompt-ids.json] [--answers-out answer-ids.json] [--runs N] [--batch-only]
//! ```
//!
//! `--tasks` is `sigmaforge tasks --json` output (the first 8 lines are used); each prompt is
//! rendered with the model's chat template. Decoding is greedy and stops at the model's end
//! tokens or the budget, like a rollout. Prints one JSON object per measurement:
//! `{"mode", "batch", "tokens", "seconds", "tokens_per_s"}`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sigmaforge_model::generate::{SamplerRng, SamplingConfig, generate};
use sigmaforge_model::load::{ChatMessage, LoadOptions, load_model};
use sigmaforge_model::model::{AdapterMode, BaseQuant};

struct Args {
    model: PathBuf,
    tasks: PathBuf,
    max_new_tokens: usize,
    prompts: usize,
    base_quant: BaseQuant,
    ids_out: Option<PathBuf>,
    answers_out: Option<PathBuf>,
    runs: usize,
    /// Only the batched run (for profiling the rollout path).
    batch_only: bool,
}

/// The CLI's allocator, so that the numbers are the CLI's.
#[global_allocator]
static ALLOCATOR: sigmaforge_model::process::Allocator = sigmaforge_model::process::Allocator;

fn parse_args() -> Result<Args> {
    let mut args = Args {
        model: PathBuf::new(),
        tasks: PathBuf::new(),
        max_new_tokens: 128,
        prompts: 8,
        base_quant: BaseQuant::Dequantize,
        ids_out: None,
        answers_out: None,
        runs: 1,
        batch_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value()?.into(),
            "--tasks" => args.tasks = value()?.into(),
            "--max-new-tokens" => args.max_new_tokens = value()?.parse()?,
            "--prompts" => args.prompts = value()?.parse()?,
            "--base-quant" => args.base_quant = value()?.parse()?,
            "--ids-out" => args.ids_out = Some(value()?.into()),
            "--answers-out" => args.answers_out = Some(value()?.into()),
            "--runs" => args.runs = value()?.parse()?,
            "--batch-only" => args.batch_only = true,
            "--bench" => {} // added by `cargo bench`
            other => bail!("unknown argument {other:?}"),
        }
    }
    if args.model.as_os_str().is_empty() || args.tasks.as_os_str().is_empty() {
        bail!("usage: decode_bench --model <gguf|dir> --tasks <tasks.jsonl> [--max-new-tokens N] [--base-quant keep|q8_0|dequantize]");
    }
    Ok(args)
}

fn main() -> Result<()> {
    sigmaforge_model::process::tune_for_tensors(); // as the CLI does
    let args = parse_args()?;
    let loaded = load_model(&args.model, &LoadOptions { base_quant: args.base_quant, inference_only: true, ..Default::default() })?;
    let (model, tok) = (loaded.model, loaded.tokenizer);
    let text = std::fs::read_to_string(&args.tasks).with_context(|| format!("reading {}", args.tasks.display()))?;
    let mut prompts = Vec::new();
    for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).take(args.prompts).enumerate() {
        let task: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{} line {}", args.tasks.display(), n + 1))?;
        let messages: Vec<ChatMessage> = serde_json::from_value(task["prompt"].clone())
            .with_context(|| format!("{} line {}: no \"prompt\" message list", args.tasks.display(), n + 1))?;
        let rendered = tok.apply_chat_template(&messages, true, None)?;
        prompts.push(tok.encode(&rendered, false)?);
    }
    if let Some(path) = &args.ids_out {
        std::fs::write(path, serde_json::to_string(&prompts)?).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "{} prompts ({}–{} tokens), {} candle threads, base {:?}",
        prompts.len(),
        prompts.iter().map(Vec::len).min().unwrap_or(0),
        prompts.iter().map(Vec::len).max().unwrap_or(0),
        candle_core::utils::get_num_threads(),
        args.base_quant
    );
    let cfg = SamplingConfig { temperature: 0.0, max_new_tokens: args.max_new_tokens, num_completions: 1, ..Default::default() };
    let run = |batch: &[Vec<u32>]| -> Result<(usize, f64, Vec<Vec<u32>>)> {
        let start = Instant::now();
        let out = generate(&model, &tok, batch, &cfg, &mut SamplerRng::new(0), AdapterMode::Enabled)?;
        let secs = start.elapsed().as_secs_f64();
        Ok((out.iter().map(|r| r.completion_ids.len()).sum(), secs, out.into_iter().map(|r| r.completion_ids).collect()))
    };
    let report = |mode: &str, batch: usize, tokens: usize, secs: f64| {
        println!(
            "{}",
            serde_json::json!({"mode": mode, "batch": batch, "tokens": tokens, "seconds": secs, "tokens_per_s": tokens as f64 / secs, "base_quant": format!("{:?}", args.base_quant).to_lowercase()})
        );
    };
    for _ in 0..args.runs {
        // B = 1: one prompt at a time, as a single-stream server answers.
        let (mut tokens, mut secs) = (0, 0.0);
        let mut single = Vec::new();
        for p in prompts.iter().filter(|_| !args.batch_only) {
            let (n, s, ids) = run(std::slice::from_ref(p))?;
            tokens += n;
            secs += s;
            single.extend(ids);
        }
        if !args.batch_only {
            report("ours", 1, tokens, secs);
        }
        // B = all prompts in one batch: how rollouts are generated.
        let (n, s, batched) = run(&prompts)?;
        report("ours", prompts.len(), n, s);
        if args.batch_only {
            continue;
        }
        if let Some(path) = &args.answers_out {
            std::fs::write(path, serde_json::to_string(&single)?).with_context(|| format!("writing {}", path.display()))?;
        }
        let same = single.iter().zip(&batched).filter(|(a, b)| a == b).count();
        eprintln!("greedy answers equal at B=1 and B={}: {same} of {}", prompts.len(), prompts.len());
    }
    Ok(())
}
