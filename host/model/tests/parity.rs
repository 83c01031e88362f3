//! Logits parity with the reference implementations (Hugging Face transformers) for every
//! architecture the loader reads. The fixtures under tests/fixtures/parity/<arch>/ are tiny random
//! checkpoints with the logits transformers computed for a fixed batch (an unpadded and a
//! left-padded row), made by scripts/make-parity-fixtures.py (its docstring has the versions);
//! no Python is needed here. Each is loaded through the normal loader and must match within 1e-4
//! in f32 at every real (unpadded) position.

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use sigmaforge_model::load::{LoadOptions, load_model, load_model_with_adapter};
use sigmaforge_model::lora::LoraConfig;
use sigmaforge_model::model::{AdapterMode, CausalLm, mxfp4};

const TOLERANCE: f32 = 1e-4;

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(arch)
}

fn reference(arch: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(arch).join("reference.safetensors"), &Device::Cpu).unwrap()
}

/// max |our logit - transformers' logit| over the real positions of the reference batch.
fn max_logit_diff(model: &CausalLm, arch: &str) -> f32 {
    max_diff_to(model, arch, "logits")
}

fn max_diff_to(model: &CausalLm, arch: &str, key: &str) -> f32 {
    let r = reference(arch);
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = r["attention_mask"].to_dtype(DType::U32).unwrap();
    let want = &r[key];
    let got = model.forward(&ids, &mask, None, AdapterMode::Enabled).unwrap();
    assert_eq!(got.dims(), want.dims(), "{arch}");
    let real = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    (got - want).unwrap().abs().unwrap().broadcast_mul(&real).unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn check(arch: &str, lora: Option<LoraConfig>) -> f32 {
    let opts = LoadOptions { lora, ..LoadOptions::default() };
    let loaded = load_model(&fixture(arch), &opts).unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    let d = max_logit_diff(&loaded.model, arch);
    println!("{arch} (lora: {}): max |d logit| = {d:.3e}", opts.lora.is_some());
    assert!(d <= TOLERANCE, "{arch}: logits differ from transformers' by {d}");
    d
}

#[test]
fn qwen3_logits_match_transformers() {
    check("qwen3", None);
}

#[test]
fn llama_logits_match_transformers() {
    check("llama", None);
}

/// Full fine-tuning dequantises the MXFP4 experts into trainable weights; under LoRA they stay
/// packed and are dequantised per expert in the forward pass. Both must give the reference.
#[test]
fn gpt_oss_logits_match_transformers_with_mxfp4_experts() {
    check("gpt_oss", None);
    let lora = LoraConfig { rank: 2, alpha: 4.0, target_modules: vec!["all-linear".into()], target_parameters: vec![] };
    check("gpt_oss", Some(lora.clone()));
    let loaded = load_model(&fixture("gpt_oss"), &LoadOptions { lora: Some(lora), ..LoadOptions::default() }).unwrap();
    let names: Vec<String> = loaded.model.merged_weights().unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"model.layers.0.mlp.experts.gate_up_proj_blocks".to_string()), "experts not kept packed under LoRA");
    assert!(!names.iter().any(|n| n.ends_with("experts.gate_up_proj")));
}

/// Our MXFP4 unpacking equals transformers' `convert_moe_packed_tensors` (which also moves the
/// output dim last): on every byte value with a wide exponent range, and on the fixture's layer 0.
#[test]
fn mxfp4_unpacking_matches_transformers() {
    let r = reference("gpt_oss");
    let ours = mxfp4::dequantize(&r["mxfp4_check.blocks"], &r["mxfp4_check.scales"], DType::F32).unwrap().transpose(1, 2).unwrap();
    let d = (ours - &r["mxfp4_check.dequantized"]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0);
    let weights = candle_core::safetensors::load(fixture("gpt_oss").join("model.safetensors"), &Device::Cpu).unwrap();
    for proj in ["gate_up_proj", "down_proj"] {
        let name = format!("model.layers.0.mlp.experts.{proj}");
        let ours = mxfp4::dequantize(&weights[&format!("{name}_blocks")], &weights[&format!("{name}_scales")], DType::F32).unwrap();
        let want = &r[&format!("mxfp4.layer0.{proj}")];
        let d = (ours.transpose(1, 2).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{proj}");
        assert!(want.i(0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
}

/// A LoRA adapter saved by peft itself (q/k/v/o, and for GPT-OSS both expert weights through
/// target_parameters; random B), read by our loader and merged into the base: the logits peft
/// computes with it applied.
#[test]
fn peft_adapters_load_as_peft_applies_them() {
    for arch in ["qwen3", "llama", "gpt_oss"] {
        let dir = fixture(arch);
        let loaded = load_model_with_adapter(&dir, Some(&dir.join("adapter")), &LoadOptions::default()).unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        let d = max_diff_to(&loaded.model, arch, "logits_with_adapter");
        println!("{arch} + peft adapter: max |d logit| = {d:.3e}");
        assert!(d <= TOLERANCE, "{arch}: logits with the adapter differ from peft's by {d}");
    }
}

/// The other direction, which needs Python and so is not part of the test run:
/// scripts/check-peft-export.py runs this (SIGMAFORGE_PEFT_CHECK=<dir>) to export a LoRA adapter
/// of each fixture with our exporter, then applies it with peft to the transformers model and
/// compares the logits with ours.
#[test]
#[ignore = "run by scripts/check-peft-export.py"]
fn export_adapters_for_the_peft_check() {
    let out = PathBuf::from(std::env::var("SIGMAFORGE_PEFT_CHECK").expect("SIGMAFORGE_PEFT_CHECK names the output directory"));
    for arch in ["qwen3", "llama", "gpt_oss"] {
        // GPT-OSS: its experts too (PEFT's target_parameters).
        let target_parameters = if arch == "gpt_oss" { sigmaforge_model::lora::EXPERT_PARAMETERS.map(String::from).to_vec() } else { vec![] };
        let lora = LoraConfig { rank: 3, alpha: 6.0, target_modules: vec!["all-linear".into()], target_parameters };
        let model = load_model(&fixture(arch), &LoadOptions { lora: Some(lora), seed: 5, ..LoadOptions::default() }).unwrap().model;
        // Fresh adapters have B = 0 (no effect); give every B a value so the check means something.
        let mut values = std::collections::HashMap::new();
        for (i, (name, var)) in model.trainable_vars().into_iter().enumerate() {
            let t = if name.contains("lora_B") {
                (var.as_tensor().ones_like().unwrap() * (0.05 * (i % 7) as f64 - 0.15)).unwrap()
            } else {
                var.as_tensor().clone()
            };
            values.insert(name, t);
        }
        model.load_trainable(&values).unwrap();
        sigmaforge_model::export::peft_adapter(&model, &out.join(arch)).unwrap();
        let r = reference(arch);
        let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
        let mask = r["attention_mask"].to_dtype(DType::U32).unwrap();
        let logits = model.forward(&ids, &mask, None, AdapterMode::Enabled).unwrap();
        candle_core::safetensors::save(&std::collections::HashMap::from([("logits".to_string(), logits)]), out.join(arch).join("ours.safetensors"))
            .unwrap();
    }
}
