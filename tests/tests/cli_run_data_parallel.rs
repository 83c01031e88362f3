//! `sigmaforge run` as a data-parallel job: two processes started like torchrun starts them
//! (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) train a tiny model on the example regex task
//! plugin, with one run directory whose shared files only rank 0 writes. The job uses the
//! reference recipe's memory settings (ZeRO-2 with activation checkpointing and chunked
//! logits); the trainer's own tests compare every sharding mode with the replicated one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use sigmaforge_model::export;
use sigmaforge_model::model::{CausalLm, ModelConfig};
use sigmaforge_model::testing::tiny_tokenizer;

/// A random tiny Qwen3 as a Hugging Face directory (long enough context for the plugin's
/// prompts, which the word-level tokenizer turns into one token per word).
fn tiny_model_dir(dir: &Path) {
    let mut mc = ModelConfig::tiny_qwen3();
    mc.max_position_embeddings = 2048;
    let model = CausalLm::random(&mc, None, 5, DType::F32, &Device::Cpu).unwrap();
    export::merged_hf_dir(&model, &tiny_tokenizer(mc.vocab_size).unwrap(), dir).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn two_ranks_train_one_run_and_rank_0_writes_its_files() {
    let root = std::env::temp_dir().join(format!("sf-e2e-dp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let model = root.join("model");
    tiny_model_dir(&model);
    let config = root.join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "model: {{ path: {}, dtype: f32, device: cpu }}\nfinetune: full\n\
             training: {{ steps: 2, prompts_per_step: 3, rollouts_per_prompt: 2, micro_batch_size: 4, passes_per_batch: 1, seed: 3,\n\
               shard_optimizer_state: true, shard_gradients: true, memory: {{ activation_checkpointing: true, logits_chunk: 2 }} }}\n\
             generation: {{ max_new_tokens: 4, max_prompt_tokens: 1500, temperature: 1.0, prompts_per_call: 1 }}\n\
             grpo: {{ beta: 0.0 }}\noptimizer: {{ lr: 0.01 }}\ncheckpoint: {{ every: 1, keep: 0 }}\n\
             export: {{ merged: true, lora_adapter: false }}\n",
            serde_json::to_string(&model.display().to_string()).unwrap()
        ),
    )
    .unwrap();
    let plugin = sigmaforge_e2e::wasm_plugin("regex-task");
    let run_dir = root.join("run");
    let port = free_port().to_string();
    let mut ranks: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(sigmaforge_e2e::sigmaforge_bin())
                .args(["run", "--plugins"])
                .arg(&plugin)
                .arg("--config")
                .arg(&config)
                .arg("--out")
                .arg(&run_dir)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("RAYON_NUM_THREADS", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut logs = Vec::new();
    for (rank, child) in ranks.iter_mut().enumerate() {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "rank {rank} did not finish in 3 minutes");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "rank {rank} failed:\n{err}");
        logs.push(err);
    }
    assert!(logs[0].contains("data-parallel job of 2 ranks, ZeRO-2"), "{}", logs[0]);
    assert!(!logs[1].contains("checkpoint:"), "rank 1 reports nothing but its own problems:\n{}", logs[1]);

    // One record per step, counting all 3 prompts × 2 rollouts of both ranks.
    let metrics: Vec<serde_json::Value> =
        std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(metrics.len(), 2);
    for m in &metrics {
        assert_eq!(m["rollouts"], 6, "{m}");
        assert_eq!(m["groups"], 3, "{m}");
    }
    // Each rank logged its own completions: rank 0 has 2 prompt groups, rank 1 one.
    let lines = |f: &str| std::fs::read_to_string(run_dir.join(f)).unwrap().lines().count();
    assert_eq!(lines("rollouts-rank-0.jsonl"), 2 * 2 * 2);
    assert_eq!(lines("rollouts-rank-1.jsonl"), 2 * 2);
    assert!(!run_dir.join("rollouts.jsonl").exists());
    // Rank 0's checkpoints hold both ranks' RNG streams; the export is there.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("checkpoints/step-000002/state.json")).unwrap()).unwrap();
    assert_eq!(state["rank_rngs"].as_array().map(Vec::len), Some(2), "{state}");
    assert!(run_dir.join("export/merged/model.safetensors").is_file());
    assert!(run_dir.join("config.yaml").is_file());

    // Resuming with a different number of ranks is refused with the number to use.
    let out = Command::new(sigmaforge_e2e::sigmaforge_bin()).args(["run", "--plugins"]).arg(&plugin).arg("--resume").arg(&run_dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WORLD_SIZE=2"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
