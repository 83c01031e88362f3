//! Shared fixtures of the trainer's integration tests: a tiny model, and a toy verifiable task
//! served through the same `TaskEnvironment` trait the plugin runtime implements.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use sigmaforge_model::load::ChatMessage;
use sigmaforge_model::model::{CausalLm, ModelConfig};
use sigmaforge_model::testing::tiny_tokenizer;
use sigmaforge_reward::{ComponentScore, ScoreResult, Scorer, TaskEnvironment, TaskPrompt, TaskRef};
use sigmaforge_trainer::config::RunConfig;
use sigmaforge_trainer::train::Trainer;

/// Toy verifiable task: reward = share of the `max_new_tokens` completion slots filled with a
/// "target" word (w4 … w15, 12 of the 64 ids). A random model scores ~0.15; a model that learnt
/// the preference scores near 1. Component `target_share` is the same value.
pub struct TargetWords {
    pub max_new_tokens: usize,
}

impl TaskEnvironment for TargetWords {
    fn tasks(&self) -> anyhow::Result<Vec<TaskPrompt>> {
        Ok((0..16)
            .map(|i| TaskPrompt { id: format!("task-{i}"), messages: vec![ChatMessage::new("user", format!("w{} w{}", 20 + i, 40 + (i * 7) % 20))] })
            .collect())
    }
}

impl Scorer for TargetWords {
    fn name(&self) -> String {
        "target-words".into()
    }

    fn components(&self) -> Vec<(String, f64)> {
        vec![("target_share".into(), 1.0)]
    }

    fn score_batch(&self, items: &[(TaskRef, String)]) -> Vec<ScoreResult> {
        items
            .iter()
            .map(|(_, text)| {
                let hits = text
                    .split_whitespace()
                    .filter(|w| w.strip_prefix('w').and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| (4..16).contains(&n)))
                    .count();
                let v = hits as f64 / self.max_new_tokens as f64;
                let share = ComponentScore { name: "target_share".into(), value: v, weight: 1.0, detail: format!("{hits} target words") };
                ScoreResult { total: v, components: vec![share], error: None }
            })
            .collect()
    }
}

pub fn tiny_config(yaml_overrides: &str) -> RunConfig {
    tiny_config_layers(&[yaml_overrides])
}

/// [`tiny_config`] with several override documents, merged in order (later ones win key by key).
pub fn tiny_config_layers(layers: &[&str]) -> RunConfig {
    let base = r#"
model: { path: test, dtype: f32, device: cpu }
finetune: full
training: { steps: 6, prompts_per_step: 2, rollouts_per_prompt: 4, micro_batch_size: 3, passes_per_batch: 2, seed: 7 }
generation: { max_new_tokens: 6, temperature: 1.0, prompts_per_call: 1 }
grpo: { epsilon_low: 0.2, epsilon_high: 0.28, beta: 0.05, loss_aggregation: token }
optimizer: { lr: 0.01, schedule: cosine, warmup_steps: 2, min_lr_ratio: 0.1, max_grad_norm: 1.0 }
checkpoint: { every: 3, keep: 0 }
export: { merged: false, lora_adapter: false }
"#;
    let mut v: serde_json::Value = serde_norway::from_str(base).unwrap();
    for layer in layers.iter().filter(|l| !l.trim().is_empty()) {
        let o: serde_json::Value = serde_norway::from_str(layer).unwrap();
        merge(&mut v, o);
    }
    RunConfig::from_yaml(&serde_norway::to_string(&v).unwrap(), "test config").unwrap()
}

fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

pub fn tiny_trainer(cfg: &RunConfig, run_dir: &std::path::Path) -> Trainer {
    let mc = ModelConfig::tiny_qwen3();
    let model = CausalLm::random(&mc, cfg.lora(), 11, DType::F32, &Device::Cpu).unwrap();
    let tok = tiny_tokenizer(mc.vocab_size).unwrap();
    let env = Arc::new(TargetWords { max_new_tokens: cfg.generation.max_new_tokens });
    Trainer::new(cfg.clone(), model, tok, env, run_dir).unwrap()
}

pub fn temp_run_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sf-trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// All trainable weights, flattened in name order.
pub fn weights(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> =
        t.model().trainable_vars().into_iter().map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
