//! GRPO learns from a reward served by a plugin, end to end as a user runs it: a tiny random
//! Qwen3 written as a Hugging Face directory, the toy task plugin compiled to wasm
//! (tests/toy-task), and `sigmaforge run --plugins toy-task.wasm --config tiny.yaml`. The mean
//! reward must rise clearly within 40 CPU steps; metrics, checkpoints and exports must exist.

use std::path::Path;

use candle_core::{DType, Device};
use sigmaforge_e2e::{run_sigmaforge, scratch_dir, sigmaforge_bin, wasm_plugin};
use sigmaforge_model::export;
use sigmaforge_model::model::{CausalLm, ModelConfig};
use sigmaforge_model::testing::tiny_tokenizer;

/// The tiny model and tokenizer in the layout `--config model.path` expects.
fn write_tiny_model(dir: &Path) {
    let mc = ModelConfig::tiny_qwen3();
    let model = CausalLm::random(&mc, None, 11, DType::F32, &Device::Cpu).unwrap();
    let tok = tiny_tokenizer(mc.vocab_size).unwrap();
    export::merged_hf_dir(&model, &tok, dir).unwrap();
}

fn config(model_dir: &Path) -> String {
    format!(
        r#"
model: {{ path: "{}", dtype: f32, device: cpu }}
finetune: full
training: {{ steps: 40, prompts_per_step: 4, rollouts_per_prompt: 8, micro_batch_size: 16, passes_per_batch: 1, seed: 7 }}
generation: {{ max_new_tokens: 6, temperature: 1.0, prompts_per_call: 1 }}
grpo: {{ epsilon_low: 0.2, epsilon_high: 0.28, beta: 0.0, loss_aggregation: token }}
optimizer: {{ lr: 0.02, schedule: constant, warmup_steps: 0, max_grad_norm: 1.0 }}
checkpoint: {{ every: 20, keep: 0 }}
export: {{ merged: true, lora_adapter: false }}
"#,
        model_dir.display()
    )
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn run_learns_from_a_wasm_plugin_reward() {
    let _ = sigmaforge_bin();
    let plugin = wasm_plugin("toy-task-plugin");
    let dir = scratch_dir("train-plugin-reward");
    let model_dir = dir.join("tiny-model");
    write_tiny_model(&model_dir);
    let cfg = dir.join("tiny.yaml");
    std::fs::write(&cfg, config(&model_dir)).unwrap();
    let run_dir = dir.join("run");

    let (code, _stdout, stderr) =
        run_sigmaforge(&["run", "--plugins", plugin.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "--out", run_dir.to_str().unwrap()], None);
    assert_eq!(code, 0, "sigmaforge run failed:\n{stderr}");
    assert!(stderr.contains("on 16 tasks of plugin `toy_task_plugin`"), "the run did not report the plugin it trains on:\n{stderr}");

    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(steps.len(), 40, "one metrics line per step");
    let rewards: Vec<f64> = steps.iter().map(|m| m["reward"]["mean"].as_f64().unwrap()).collect();
    // The reward came through the plugin: its component is there, and nothing failed.
    for m in &steps {
        assert!(m["reward_components"]["target_share"].is_object(), "no plugin component in {m}");
        assert_eq!(m["reward_errors"].as_u64(), Some(0), "reward failures in {m}");
    }
    let (first, last) = (mean(&rewards[..5]), mean(&rewards[rewards.len() - 5..]));
    eprintln!("reward {first:.3} -> {last:.3}; curve {rewards:.2?}");
    assert!(last > first + 0.3, "mean reward went from {first:.3} to {last:.3}: no learning through the plugin");

    for f in ["metrics.png", "rollouts.jsonl", "checkpoints/step-000020/state.json", "export/merged/model.safetensors"] {
        assert!(run_dir.join(f).exists(), "run directory lacks {f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
