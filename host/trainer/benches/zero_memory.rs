//! Peak memory per rank of a 2-rank data-parallel job, replicated vs ZeRO-1 vs ZeRO-2
//! (BENCHMARKS.md, "Data parallel: memory per rank").
//! Run: `cargo bench -p sigmaforge-trainer --bench zero_memory`
//!
//! Each configuration runs as a real job: this binary starts itself twice with the launcher's
//! variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), the ranks talk over loopback TCP,
//! and each trains 2 GRPO steps of a 42M-parameter random Qwen3 (f32, full fine-tune, activation
//! checkpointing and chunked logits in every configuration, β = 0) on the toy task of the
//! trainer's tests. Each rank reports its peak resident memory (VmHWM from /proc), so what the
//! table shows is everything the process held at its worst moment: weights, gradients,
//! optimizer state, activations, the binary itself.
//!
//! The replicated job is the anchor; the model's own state is printed beside it so the
//! differences can be checked against the arithmetic (f32: weights 4 B, gradient accumulator
//! 4 B, moments 8 B per parameter).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use candle_core::{DType, Device};
use sigmaforge_distributed::{Backend, LaunchEnv, init};
use sigmaforge_model::model::{CausalLm, ModelConfig};
use sigmaforge_model::testing::tiny_tokenizer;
use sigmaforge_trainer::parallel::DataParallel;
use sigmaforge_trainer::train::Trainer;

const CHILD: &str = "SIGMAFORGE_BENCH_ZERO_CHILD";
const MODES: [(&str, &str); 3] =
    [("replicated", ""), ("ZeRO-1", "shard_optimizer_state: true"), ("ZeRO-2", "shard_optimizer_state: true, shard_gradients: true")];

fn model_config() -> ModelConfig {
    let mut mc = ModelConfig::tiny_qwen3();
    mc.vocab_size = 16_384;
    mc.hidden_size = 512;
    mc.intermediate_size = 1536;
    mc.num_hidden_layers = 8;
    mc.num_attention_heads = 8;
    mc.num_key_value_heads = 4;
    mc.head_dim = 64;
    mc
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN);
    kb / 1024.0
}

/// One rank: train 2 steps, print `peak_mb seconds_per_step` on stdout.
fn child(mode: usize) -> anyhow::Result<()> {
    let launch = LaunchEnv::from_env()?;
    let dp = DataParallel::new(init(&launch, Backend::Tcp, false)?);
    let cfg = common::tiny_config(&format!(
        "training: {{ steps: 2, prompts_per_step: 2, rollouts_per_prompt: 4, micro_batch_size: 2, passes_per_batch: 1, {} memory: {{ activation_checkpointing: true, logits_chunk: 4 }} }}\n\
         generation: {{ max_new_tokens: 16 }}\ngrpo: {{ beta: 0.0 }}\ncheckpoint: {{ every: 0, keep: 0 }}",
        if MODES[mode].1.is_empty() { String::new() } else { format!("{},", MODES[mode].1) }
    ));
    let mc = model_config();
    let model = CausalLm::random(&mc, None, 3, DType::F32, &Device::Cpu)?;
    let tok = tiny_tokenizer(mc.vocab_size)?;
    let env = std::sync::Arc::new(common::TargetWords { max_new_tokens: cfg.generation.max_new_tokens });
    let run_dir = std::env::temp_dir().join(format!("sf-bench-zero-{}-{}", std::process::id(), launch.rank));
    let mut trainer = Trainer::data_parallel(cfg, model, tok, env, &run_dir, dp)?;
    let start = Instant::now();
    trainer.run(false, None)?;
    let per_step = start.elapsed().as_secs_f64() / 2.0;
    println!("{:.1} {per_step:.2}", peak_rss_mb());
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if let Ok(mode) = std::env::var(CHILD) {
        return child(mode.parse()?);
    }
    let mc = model_config();
    let params = CausalLm::random(&mc, None, 3, DType::F32, &Device::Cpu)?.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum::<usize>();
    let mb = |bytes_per_param: f64| params as f64 * bytes_per_param / (1024.0 * 1024.0);
    println!("zero_memory: 2 ranks, Qwen3-shaped {:.1}M parameters (f32), 2 GRPO steps each", params as f64 / 1e6);
    println!(
        "model state per rank by the arithmetic: replicated {:.0} MB (weights + gradients + moments), ZeRO-1 {:.0} MB, ZeRO-2 {:.0} MB (+ activations and one segment's gradients)",
        mb(16.0),
        mb(4.0 + 4.0 + 4.0),
        mb(4.0 + 2.0 + 4.0)
    );
    println!("| configuration | rank 0 peak RSS (MB) | rank 1 peak RSS (MB) | s/step |");
    println!("|---|---:|---:|---:|");
    for (mode, (name, _)) in MODES.iter().enumerate() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let children: Vec<_> = (0..2)
            .map(|rank| {
                Command::new(std::env::current_exe().unwrap())
                    .env(CHILD, mode.to_string())
                    .env("RANK", rank.to_string())
                    .env("WORLD_SIZE", "2")
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", port.to_string())
                    .env("RAYON_NUM_THREADS", "1")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        let mut cells = Vec::new();
        for child in children {
            let out = child.wait_with_output()?;
            anyhow::ensure!(out.status.success(), "{name}: a rank failed");
            cells.push(String::from_utf8(out.stdout)?.trim().to_string());
        }
        let (r0, r1) = (cells[0].split(' ').collect::<Vec<_>>(), cells[1].split(' ').collect::<Vec<_>>());
        println!("| {name} | {} | {} | {} |", r0[0], r1[0], r0[1]);
    }
    Ok(())
}
