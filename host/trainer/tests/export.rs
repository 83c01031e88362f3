//! The merged Hugging Face export and the PEFT adapter load back through the project's own
//! loader and reproduce the trained model.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use sigmaforge_model::export;
use sigmaforge_model::load::{LoadOptions, load_hf_dir};
use sigmaforge_model::model::{AdapterMode, CausalLm, ModelConfig};

fn logits(model: &CausalLm) -> Vec<f32> {
    let ids = Tensor::new(&[[2u32, 20, 33, 41, 5, 9], [0, 0, 2, 27, 44, 6]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    model.forward(&ids, &mask, None, AdapterMode::Enabled).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn merged_and_peft_exports_load_back_and_match_the_trained_model() {
    let cfg = tiny_config(
        "finetune: lora\nlora: { rank: 4, alpha: 8, target_modules: [q_proj, v_proj, gate_proj] }\ntraining: { steps: 3 }\nexport: { merged: true, lora_adapter: true }",
    );
    let dir = temp_run_dir("export");
    let mut t = tiny_trainer(&cfg, &dir);
    t.run(false, None).unwrap();
    let trained = logits(t.model());
    let untrained = tiny_trainer(&cfg, &temp_run_dir("export-untrained"));
    assert!(max_diff(&trained, &logits(untrained.model())) > 1e-4, "training changed nothing; the test would prove nothing");

    // Merged directory → our HF loader, no LoRA: same logits as the adapted model.
    let merged = dir.join("export/merged");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(merged.join(f).is_file(), "missing {f}");
    }
    let loaded = load_hf_dir(&merged, &LoadOptions::default()).unwrap();
    let d = max_diff(&trained, &logits(&loaded.model));
    assert!(d < 1e-4, "merged export differs by {d}");

    // PEFT adapter: PEFT key names, and base + adapter reproduces the trained model.
    let lora_dir = dir.join("export/adapter");
    let raw = candle_core::safetensors::load(lora_dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(raw.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), "{:?}", raw.keys());
    assert!(raw.contains_key("base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"));
    let acfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(lora_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(acfg["peft_type"], "LORA");
    assert_eq!(acfg["r"], 4);
    let (lora, weights) = export::read_peft_adapter(&lora_dir).unwrap();
    let base_with_adapter = CausalLm::random(&ModelConfig::tiny_qwen3(), Some(&lora), 11, DType::F32, &Device::Cpu).unwrap();
    base_with_adapter.load_trainable(&weights).unwrap();
    let d = max_diff(&trained, &logits(&base_with_adapter));
    assert!(d < 1e-5, "base + PEFT adapter differs by {d}");
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = std::fs::remove_dir_all(temp_run_dir("export-untrained"));
}
