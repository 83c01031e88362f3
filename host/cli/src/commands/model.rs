//! `sigmaforge model inspect <dir|gguf>` (what a checkpoint is, from its headers) and
//! `sigmaforge model perplexity --model <dir|gguf> --file <text>` (mean NLL and perplexity in
//! llama.cpp's `llama-perplexity` scheme, for parity checks against it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Subcommand;
use serde_json::json;
use sigmaforge_model::device::select_device;
use sigmaforge_model::inspect::{ModelReport, inspect};
use sigmaforge_model::load::{LoadOptions, load_model};
use sigmaforge_model::model::BaseQuant;
use sigmaforge_model::perplexity::perplexity;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Architecture, parameter count, dtypes and quantisation per tensor kind, chat template and
    /// special tokens of a Hugging Face directory or a GGUF file (the weights are not loaded).
    Inspect {
        /// A Hugging Face model directory or a .gguf file.
        model: PathBuf,
        /// Print JSON (the whole chat template included).
        #[arg(long)]
        json: bool,
    },
    /// Tokens, mean NLL (nats/token) and perplexity of a text file, scored as llama.cpp's
    /// llama-perplexity does: non-overlapping chunks of --ctx tokens, each chunk's first token
    /// replaced by BOS when the tokenizer adds one, the second half of each chunk scored.
    Perplexity {
        /// A Hugging Face model directory or a .gguf file (GGUF weights are dequantized).
        #[arg(long)]
        model: PathBuf,
        /// The text file to score (UTF-8).
        #[arg(long)]
        file: PathBuf,
        /// Tokens per chunk.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print JSON: tokens, mean_nll, perplexity (and chunks, scored, ctx, per-chunk NLL).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.action {
        Action::Inspect { model, json } => {
            let report = inspect(&model)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Perplexity { model, file, ctx, device, json } => run_perplexity(&model, &file, ctx, &device, json),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_report(r: &ModelReport) {
    println!("model:        {} ({})", r.path, r.format);
    let mut arch = r.architecture.clone();
    if let Some(t) = &r.model_type {
        arch.push_str(&format!(" (model_type {t})"));
    }
    if let Some(n) = &r.name {
        arch.push_str(&format!(" - {n}"));
    }
    println!("architecture: {arch}");
    match &r.load_error {
        None => println!("loadable:     yes"),
        Some(e) => println!("loadable:     no ({e})"),
    }
    println!("parameters:   {} in {} tensors", thousands(r.parameters), r.tensors);
    let dtypes: Vec<String> = r.dtypes.iter().map(|(d, n)| format!("{d} {}", thousands(*n))).collect();
    println!("dtypes:       {}", dtypes.join(", "));
    if let Some(q) = &r.quantization {
        println!("quantization: {}", q.as_str().map(str::to_owned).unwrap_or_else(|| q.to_string()));
    }
    if !r.config.is_empty() {
        let cfg: Vec<String> = r.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("config:       {}", cfg.join(" "));
    }
    println!("tensor kinds:");
    for k in &r.tensor_kinds {
        println!("  {:<48} x{:<3} {:<10} {:?} {}", k.kind, k.count, k.dtype, k.shape, thousands(k.parameters));
    }
    match (&r.tokenizer, &r.tokenizer_error) {
        (Some(t), _) => {
            println!("tokenizer:    {} tokens, chat format {}, add BOS {}", t.vocab_size, t.chat_format, if t.add_bos { "yes" } else { "no" });
            println!("bos/eos:      {} / {}", t.bos_token.as_deref().unwrap_or("-"), t.eos_token.as_deref().unwrap_or("-"));
            println!("stop tokens:  {}", t.stop_tokens.join(" "));
            let shown: Vec<&str> = t.special_tokens.iter().take(24).map(String::as_str).collect();
            let more = t.special_tokens.len().saturating_sub(shown.len());
            let tail = if more > 0 { format!(" (+{more} more)") } else { String::new() };
            println!("special:      {}{tail}", shown.join(" "));
        }
        (None, Some(e)) => println!("tokenizer:    not readable ({e})"),
        (None, None) => println!("tokenizer:    none"),
    }
    match &r.chat_template {
        None => println!("chat template: none"),
        Some(t) => {
            let lines: Vec<&str> = t.lines().collect();
            println!("chat template ({} lines{}):", lines.len(), if lines.len() > 8 { ", first 8; --json for all" } else { "" });
            for l in lines.iter().take(8) {
                println!("  {l}");
            }
        }
    }
}

fn run_perplexity(model_path: &Path, file: &Path, ctx: usize, device: &str, json: bool) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the text file {}", file.display()))?;
    let report = inspect(model_path)?;
    let add_bos = report.tokenizer.as_ref().is_some_and(|t| t.add_bos);
    let (device, device_name) = select_device(device)?;
    let start = Instant::now();
    // The exact (dequantised) model: perplexity measures the file's weights, as llama.cpp does.
    let opts = LoadOptions { dtype: DType::F32, device, base_quant: BaseQuant::Dequantize, inference_only: true, ..Default::default() };
    let loaded = load_model(model_path, &opts)?;
    let load_s = start.elapsed().as_secs_f64();
    let tok = &loaded.tokenizer;
    // llama.cpp tokenizes the whole file with the vocabulary's own BOS rule; an HF tokenizer's
    // post-processor adds its BOS itself, a GGUF one says so in tokenizer.ggml.add_bos_token.
    let mut tokens = tok.encode(&text, true).with_context(|| format!("cannot tokenize {}", file.display()))?;
    let bos = if add_bos { tok.bos_token().and_then(|b| tok.token_to_id(b)) } else { None };
    if let Some(b) = bos
        && tokens.first() != Some(&b)
    {
        tokens.insert(0, b);
    }
    let start = Instant::now();
    let r = perplexity(&loaded.model, &tokens, ctx, bos).with_context(|| format!("scoring {}", file.display()))?;
    let eval_s = start.elapsed().as_secs_f64();
    if json {
        let out = json!({
            "model": model_path.display().to_string(),
            "file": file.display().to_string(),
            "device": device_name,
            "tokens": r.tokens,
            "ctx": r.ctx,
            "chunks": r.chunks,
            "scored": r.scored,
            "bos": bos.is_some(),
            "mean_nll": r.mean_nll,
            "perplexity": r.perplexity,
            "chunk_nll": r.chunk_nll,
            "seconds": eval_s,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        eprintln!("loaded {} on {device_name} in {load_s:.1} s; scored in {eval_s:.1} s", model_path.display());
        println!(
            "tokens:     {} ({} chunks of {}, {} scored{})",
            r.tokens,
            r.chunks,
            r.ctx,
            r.scored,
            if bos.is_some() { ", BOS first" } else { "" }
        );
        println!("mean NLL:   {:.4} nats/token", r.mean_nll);
        println!("perplexity: {:.4}", r.perplexity);
    }
    Ok(ExitCode::SUCCESS)
}
