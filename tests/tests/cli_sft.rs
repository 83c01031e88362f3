//! `sigmaforge sft` and the SFT stage of `sigmaforge run`, through the built binary and the real
//! sigma plugin, on a tiny random model: the files a user gets (metrics, plot, checkpoints,
//! exports), `--steps` and `--resume`, GRPO from an SFT output (merged directory and base +
//! adapter), the one-command SFT → GRPO run with its resume, and the refusal of a plugin built
//! against WIT 0.1.0.

use std::path::Path;

use candle_core::{DType, Device};
use sigmaforge_e2e::{run_sigmaforge, scratch_dir, wasm_plugin};
use sigmaforge_model::export;
use sigmaforge_model::model::{CausalLm, ModelConfig};
use sigmaforge_model::testing::tiny_tokenizer;

fn tiny_model_dir(dir: &Path) {
    let mut mc = ModelConfig::tiny_qwen3();
    mc.max_position_embeddings = 2048;
    let model = CausalLm::random(&mc, None, 5, DType::F32, &Device::Cpu).unwrap();
    export::merged_hf_dir(&model, &tiny_tokenizer(mc.vocab_size).unwrap(), dir).unwrap();
}

/// A LoRA run config over `model` (and `extra` YAML lines).
fn config(root: &Path, name: &str, model: &str, extra: &str) -> String {
    config_with_adapter(root, name, model, None, extra)
}

/// [`config`] with `model.adapter`.
fn config_with_adapter(root: &Path, name: &str, model: &str, adapter: Option<&str>, extra: &str) -> String {
    let adapter = adapter.map(|a| format!("adapter: {}, ", serde_json::to_string(a).unwrap())).unwrap_or_default();
    let text = format!(
        "model: {{ path: {}, {adapter}dtype: f32, device: cpu }}\nfinetune: lora\nlora: {{ rank: 2, alpha: 4, target_modules: [q_proj, v_proj] }}\n\
         training: {{ steps: 1, prompts_per_step: 1, rollouts_per_prompt: 2, micro_batch_size: 2, seed: 3 }}\n\
         generation: {{ max_new_tokens: 4, max_prompt_tokens: 1500, temperature: 1.0 }}\n\
         optimizer: {{ lr: 0.01 }}\ncheckpoint: {{ every: 1, keep: 0 }}\n{extra}\n",
        serde_json::to_string(model).unwrap()
    );
    let path = root.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sft_trains_exports_resumes_and_feeds_grpo() {
    let root = scratch_dir("cli-sft");
    let model = root.join("model");
    tiny_model_dir(&model);
    let model = model.display().to_string();
    let sigma = wasm_plugin("sigma-plugin").display().to_string();
    let sft_yaml = "sft: { steps: 5, batch_size: 2, micro_batch_size: 2, lr: 0.01, max_answer_tokens: 32 }";
    let cfg = config(&root, "sft.yaml", &model, sft_yaml);
    let out = root.join("sft").display().to_string();

    // --steps overrides sft.steps.
    let (code, _, err) = run_sigmaforge(&["sft", "--plugins", &sigma, "--config", &cfg, "--steps", "2", "--out", &out], None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("300 reference answers of plugin"), "{err}");
    let m = jsonl(&root.join("sft/metrics.jsonl"));
    assert_eq!(m.len(), 2, "{m:?}");
    for (i, r) in m.iter().enumerate() {
        assert_eq!(r["step"], i as u64 + 1);
        for key in ["loss", "token_accuracy", "lr", "grad_norm", "tokens_per_s"] {
            assert!(r[key].as_f64().is_some_and(f64::is_finite), "{key} in {r}");
        }
        assert!(r["tokens"].as_u64().unwrap() > 0);
    }
    for f in
        ["metrics.png", "config.yaml", "checkpoints/step-000002/state.json", "export/merged/model.safetensors", "export/adapter/adapter_config.json"]
    {
        assert!(root.join("sft").join(f).is_file(), "sft/{f} is missing");
    }

    // --resume continues the run to a longer --steps: one record per step.
    let (code, _, err) = run_sigmaforge(&["sft", "--plugins", &sigma, "--resume", &out, "--steps", "3"], None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resumed from") && err.contains("at step 2"), "{err}");
    assert_eq!(jsonl(&root.join("sft/metrics.jsonl")).iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);

    // GRPO from the SFT output: its merged directory, and the base model plus its adapter.
    let merged = root.join("sft/export/merged").display().to_string();
    let adapter = root.join("sft/export/adapter").display().to_string();
    for (name, cfg) in [
        ("from-merged", config(&root, "grpo-merged.yaml", &merged, "")),
        ("from-adapter", config_with_adapter(&root, "grpo-adapter.yaml", &model, Some(&adapter), "")),
    ] {
        let run_dir = root.join(name).display().to_string();
        let (code, _, err) = run_sigmaforge(&["run", "--plugins", &sigma, "--config", &cfg, "--out", &run_dir], None);
        assert_eq!(code, 0, "{name}: {err}");
        if name == "from-adapter" {
            assert!(err.contains("+ adapter"), "{err}");
        }
        assert_eq!(jsonl(&root.join(name).join("metrics.jsonl")).len(), 1);
    }

    // A broken adapter path is an error naming it.
    let bad = config_with_adapter(&root, "bad-adapter.yaml", &model, Some("/nonexistent/adapter"), "");
    let (code, _, err) = run_sigmaforge(&["run", "--plugins", &sigma, "--config", &bad, "--out", &root.join("bad").display().to_string()], None);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/adapter"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn run_with_an_sft_section_warm_starts_then_runs_grpo_and_resumes_either_stage() {
    let root = scratch_dir("cli-sft-run");
    let model = root.join("model");
    tiny_model_dir(&model);
    let sigma = wasm_plugin("sigma-plugin").display().to_string();
    let cfg = config(&root, "run.yaml", &model.display().to_string(), "sft: { steps: 2, batch_size: 2, micro_batch_size: 2, lr: 0.01 }");
    let run_dir = root.join("run");
    let run = run_dir.display().to_string();

    let (code, _, err) = run_sigmaforge(&["run", "--plugins", &sigma, "--config", &cfg, "--out", &run, "--steps", "2"], None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sft stage: 2 steps"), "{err}");
    assert_eq!(jsonl(&run_dir.join("sft/metrics.jsonl")).len(), 2);
    assert!(run_dir.join("sft/metrics.png").is_file());
    let grpo = jsonl(&run_dir.join("metrics.jsonl"));
    assert_eq!(grpo.len(), 2, "--steps overrides training.steps");
    // Each rollout names what was asked.
    let rollouts = jsonl(&run_dir.join("rollouts.jsonl"));
    assert!(!rollouts.is_empty());
    for r in &rollouts {
        assert!(r["task"].as_str().is_some_and(|t| t.contains('#')), "{r}");
        assert!(r["request"].as_str().is_some_and(|q| q.len() > 10), "{r}");
        // ... and keeps each reward component as the plugin gave it: weight and why.
        let parts: Vec<(&str, f64)> =
            r["components"].as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap(), c["weight"].as_f64().unwrap())).collect();
        assert_eq!(parts, [("yaml_valid", 0.1), ("logsource_correct", 0.3), ("iou", 0.7)], "{r}");
        assert!(r["components"].as_array().unwrap().iter().all(|c| c["detail"].is_string()), "{r}");
    }
    assert!(
        rollouts.iter().flat_map(|r| r["components"].as_array().unwrap()).any(|c| !c["detail"].as_str().unwrap().is_empty()),
        "no component detail in rollouts.jsonl"
    );
    assert!(run_dir.join("export/merged/model.safetensors").is_file());
    assert!(run_dir.join("export/adapter/adapter_model.safetensors").is_file());

    // Resuming the finished run with more GRPO steps skips the finished SFT stage.
    let (code, _, err) = run_sigmaforge(&["run", "--plugins", &sigma, "--resume", &run, "--steps", "3"], None);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("sft stage"), "{err}");
    assert_eq!(jsonl(&run_dir.join("metrics.jsonl")).len(), 3);

    // A run stopped inside its SFT stage (only SFT checkpoints) resumes there, then does GRPO.
    let stopped = root.join("stopped");
    std::fs::create_dir_all(stopped.join("sft")).unwrap();
    std::fs::copy(root.join("run.yaml"), stopped.join("config.yaml")).unwrap();
    copy_flat_dir(&run_dir.join("sft/checkpoints/step-000001"), &stopped.join("sft/checkpoints/step-000001"));
    let lines: Vec<String> = std::fs::read_to_string(run_dir.join("sft/metrics.jsonl")).unwrap().lines().take(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(stopped.join("sft/metrics.jsonl"), lines.concat()).unwrap();
    let (code, _, err) = run_sigmaforge(&["run", "--plugins", &sigma, "--resume", &stopped.display().to_string()], None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sft stage: resumed from") && err.contains("at step 1"), "{err}");
    assert_eq!(jsonl(&stopped.join("sft/metrics.jsonl")).iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(jsonl(&stopped.join("metrics.jsonl")).len(), 1);

    // A fresh run into a directory holding a run is refused.
    let (code, _, err) = run_sigmaforge(&["run", "--plugins", &sigma, "--config", &cfg, "--out", &stopped.display().to_string()], None);
    assert_eq!(code, 2);
    assert!(err.contains("already holds checkpoints"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

/// Copies a checkpoint directory (flat: files only).
fn copy_flat_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn sft_refuses_a_plugin_without_references_naming_both_versions() {
    let root = scratch_dir("cli-sft-old");
    let model = root.join("model");
    tiny_model_dir(&model);
    let cfg = config(&root, "sft.yaml", &model.display().to_string(), "sft: { steps: 1, lr: 0.01 }");
    let old = wasm_plugin("toy-task-v010").display().to_string();
    let (code, _, err) = run_sigmaforge(&["sft", "--plugins", &old, "--config", &cfg, "--out", &root.join("o").display().to_string()], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("0.1.0") && err.contains("0.1.1") && err.contains("references"), "{err}");
    // The same plugin still works for run (a config without an SFT stage).
    let plain = config(&root, "run.yaml", &model.display().to_string(), "");
    let (code, _, err) =
        run_sigmaforge(&["run", "--plugins", &old, "--config", &plain, "--out", &root.join("r").display().to_string(), "--steps", "1"], None);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(&root).ok();
}
