//! GPT-OSS specifics: MXFP4 experts kept packed under LoRA, the sliding window, error messages,
//! and the loader's shape checks against the published 20B config.

use super::*;

fn gpt_oss_20b() -> ModelConfig {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gpt-oss-20b/config.json");
    ModelConfig::from_hf_config_json(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The model's dense weights with every expert matrix replaced by its MXFP4 packing (as a
/// published checkpoint stores it), and the same weights dequantised back.
fn packed_and_dense(model: &CausalLm) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let (mut packed, mut dense) = (HashMap::new(), HashMap::new());
    for (name, t) in model.merged_weights().unwrap() {
        if name.ends_with("experts.gate_up_proj") || name.ends_with("experts.down_proj") {
            // [E, in, out] -> rows of `in` values per output, as the checkpoint packs them.
            let (blocks, scales) = mxfp4::quantize(&t.transpose(1, 2).unwrap().contiguous().unwrap()).unwrap();
            let back = mxfp4::dequantize(&blocks, &scales, DType::F32).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
            dense.insert(name.clone(), back);
            packed.insert(format!("{name}_blocks"), blocks);
            packed.insert(format!("{name}_scales"), scales);
        } else {
            packed.insert(name.clone(), t.clone());
            dense.insert(name, t);
        }
    }
    (packed, dense)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn mxfp4_experts_stay_packed_under_lora_and_give_the_dequantised_models_logits() {
    let cfg = ModelConfig::tiny_gpt_oss();
    let (packed, dense) = packed_and_dense(&CausalLm::random(&cfg, None, 7, DType::F32, &Device::Cpu).unwrap());
    let lora = all_linear(2);
    let quantised = CausalLm::from_tensors(&cfg, packed.clone(), Some(&lora), 0, DType::F32, &Device::Cpu).unwrap();
    let reference = CausalLm::from_tensors(&cfg, dense, Some(&lora), 0, DType::F32, &Device::Cpu).unwrap();
    let (input, mask) = batch();
    let d = max_diff(
        &quantised.forward(&input, &mask, None, AdapterMode::Enabled).unwrap(),
        &reference.forward(&input, &mask, None, AdapterMode::Enabled).unwrap(),
    );
    assert!(d < 1e-5, "{d}");
    // Packed: the merged weights (and so exports and frozen copies) carry blocks and scales.
    let merged: HashMap<String, Tensor> = quantised.merged_weights().unwrap().into_iter().collect();
    assert_eq!(merged["model.layers.1.mlp.experts.down_proj_blocks"].dtype(), DType::U8);
    assert!(quantised.hf_config_json()["quantization_config"]["quant_method"] == "mxfp4");
    assert!(quantised.frozen_copy().unwrap().layers.iter().all(|l| l.mlp.is_mxfp4()));
    // Under LoRA only the attention adapters train, and they get gradients through the experts.
    randomize_lora_b(&quantised, 3);
    let vars = quantised.trainable_vars();
    assert!(vars.iter().all(|(n, _)| n.contains("self_attn") && n.contains(".lora_")));
    let grads = logprob_sum(&quantised, &input, &mask, AdapterMode::Enabled).unwrap().backward().unwrap();
    assert!(crate::gradcheck::missing_gradients(&vars, &grads).unwrap().is_empty());
    // Full fine-tuning dequantises them into trainable weights (same logits).
    let full = CausalLm::from_tensors(&cfg, packed, None, 0, DType::F32, &Device::Cpu).unwrap();
    assert!(full.trainable_vars().iter().any(|(n, _)| n == "model.layers.0.mlp.experts.gate_up_proj"));
    assert!(!full.hf_config_json().as_object().unwrap().contains_key("quantization_config"));
    let d = max_diff(
        &full.forward(&input, &mask, None, AdapterMode::Enabled).unwrap(),
        &reference.forward(&input, &mask, None, AdapterMode::Disabled).unwrap(),
    );
    assert!(d < 1e-5, "{d}");
}

#[test]
fn sliding_layers_do_not_see_past_the_window() {
    // One sliding layer, window 3: logits at position p depend only on tokens p-2 ..= p.
    let cfg = ModelConfig { num_hidden_layers: 1, sliding_layers: vec![true], ..ModelConfig::tiny_gpt_oss() };
    let model = CausalLm::random(&cfg, None, 2, DType::F32, &Device::Cpu).unwrap();
    let mask = ids(&[&[1; 7]]);
    let a = model.forward(&ids(&[&[5, 9, 13, 2, 7, 8, 9]]), &mask, None, AdapterMode::Enabled).unwrap();
    let b = model.forward(&ids(&[&[6, 10, 13, 2, 7, 8, 9]]), &mask, None, AdapterMode::Enabled).unwrap();
    assert_eq!(max_diff(&a.i((.., 4..)).unwrap(), &b.i((.., 4..)).unwrap()), 0.0);
    assert!(max_diff(&a.i((.., 3)).unwrap(), &b.i((.., 3)).unwrap()) > 1e-4);
    // The same layer as full attention does see them.
    let full_cfg = ModelConfig { sliding_layers: vec![], sliding_window: None, ..cfg.clone() };
    let weights: HashMap<String, Tensor> = model.merged_weights().unwrap().into_iter().collect();
    let full = CausalLm::from_tensors(&full_cfg, weights, None, 0, DType::F32, &Device::Cpu).unwrap();
    let c = full.forward(&ids(&[&[5, 9, 13, 2, 7, 8, 9]]), &mask, None, AdapterMode::Enabled).unwrap();
    let d = full.forward(&ids(&[&[6, 10, 13, 2, 7, 8, 9]]), &mask, None, AdapterMode::Enabled).unwrap();
    assert!(max_diff(&c.i((.., 6)).unwrap(), &d.i((.., 6)).unwrap()) > 1e-4);
}

#[test]
fn gpt_oss_errors_name_the_input() {
    let cfg = ModelConfig::tiny_gpt_oss();
    let lora = LoraConfig { rank: 2, alpha: 4.0, target_modules: vec!["q_proj".into(), "up_proj".into()], target_parameters: vec![] };
    let err = CausalLm::random(&cfg, Some(&lora), 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("up_proj") && err.contains("mixture of experts"), "{err}");
    let (mut packed, _) = packed_and_dense(&CausalLm::random(&cfg, None, 1, DType::F32, &Device::Cpu).unwrap());
    packed.remove("model.layers.2.mlp.experts.down_proj_scales");
    let err = CausalLm::from_tensors(&cfg, packed.clone(), None, 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.layers.2.mlp.experts.down_proj_scales"), "{err}");
    packed.insert("model.layers.2.mlp.experts.down_proj_scales".into(), Tensor::zeros((4, 32, 2), DType::U8, &Device::Cpu).unwrap());
    let err = CausalLm::from_tensors(&cfg, packed, None, 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("down_proj_scales") && err.contains("[4, 32, 1]"), "{err}");
    for (bad, what) in [
        (r#""num_experts_per_tok": 40"#, "num_experts_per_tok"),
        (r#""layer_types": ["full_attention"]"#, "layer_types"),
        (r#""rope_scaling": {"rope_type": "longrope", "factor": 2.0}"#, "longrope"),
        (r#""quantization_config": {"quant_method": "bitsandbytes"}"#, "bitsandbytes"),
    ] {
        let mut v = cfg.to_hf_config_json();
        let patch: serde_json::Value = serde_json::from_str(&format!("{{{bad}}}")).unwrap();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        let err = ModelConfig::from_hf_config_json(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains(what), "{what}: {err}");
    }
}

/// Real 20B weights cannot be fetched here; the loader's shape checks run against the published
/// config instead. The sizes the published checkpoint has (its safetensors headers): 10,152,345,600
/// bytes of u8 MXFP4 expert blocks/scales and 3,608,919,168 bytes of bf16 tensors.
#[test]
fn the_published_20b_config_implies_the_published_checkpoint() {
    let cfg = gpt_oss_20b();
    assert_eq!(cfg.family, Family::GptOss);
    assert_eq!((cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads), (24, 2880, 64, 64, 8));
    assert_eq!(cfg.moe, Some(MoeConfig { num_experts: 32, top_k: 4, swiglu_limit: 7.0, swiglu_alpha: 1.702 }));
    assert_eq!(cfg.sliding_window, Some(128));
    assert_eq!(cfg.sliding_layers.len(), 24);
    assert!(cfg.is_sliding(0) && !cfg.is_sliding(1) && cfg.is_sliding(22) && !cfg.is_sliding(23));
    let yarn = cfg.rope_scaling.clone().unwrap();
    assert_eq!((yarn.factor, yarn.original_max_position_embeddings, yarn.truncate), (32.0, 4096, false));
    assert!(cfg.attention_bias && !cfg.tie_word_embeddings);
    assert_eq!((cfg.rope_theta, cfg.max_position_embeddings, cfg.vocab_size), (150_000.0, 131_072, 201_088));
    let shapes = cfg.checkpoint_shapes(true);
    let find = |n: &str| shapes.iter().find(|(name, _)| name == n).map(|(_, s)| s.clone()).unwrap();
    assert_eq!(find("model.layers.0.mlp.experts.gate_up_proj_blocks"), vec![32, 5760, 90, 16]);
    assert_eq!(find("model.layers.0.mlp.experts.gate_up_proj_scales"), vec![32, 5760, 90]);
    assert_eq!(find("model.layers.23.mlp.experts.down_proj_blocks"), vec![32, 2880, 90, 16]);
    assert_eq!(find("model.layers.5.self_attn.q_proj.weight"), vec![4096, 2880]);
    assert_eq!(find("model.layers.5.self_attn.k_proj.bias"), vec![512]);
    assert_eq!(find("model.layers.5.self_attn.sinks"), vec![64]);
    let packed = |n: &str| n.ends_with("_blocks") || n.ends_with("_scales");
    let u8_bytes: usize = shapes.iter().filter(|(n, _)| packed(n)).map(|(_, s)| s.iter().product::<usize>()).sum();
    let bf16_bytes: usize = shapes.iter().filter(|(n, _)| !packed(n)).map(|(_, s)| 2 * s.iter().product::<usize>()).sum();
    assert_eq!(u8_bytes, 10_152_345_600);
    assert_eq!(bf16_bytes, 3_608_919_168);
    // 20.9B parameters, as OpenAI's model card says.
    assert_eq!(cfg.num_parameters() / 100_000_000, 209);
}

/// A LoRA run's exports: the PEFT adapter lists only GPT-OSS's attention projections, and the
/// merged directory keeps the experts packed and loads back to the same model.
#[test]
fn gpt_oss_exports_keep_experts_packed_and_reload() {
    let cfg = ModelConfig::tiny_gpt_oss();
    let (packed, _) = packed_and_dense(&CausalLm::random(&cfg, None, 5, DType::F32, &Device::Cpu).unwrap());
    let model = CausalLm::from_tensors(&cfg, packed, Some(&all_linear(2)), 0, DType::F32, &Device::Cpu).unwrap();
    randomize_lora_b(&model, 6);
    let dir = std::env::temp_dir().join(format!("sf-gpt-oss-export-{}", std::process::id()));
    crate::export::peft_adapter(&model, &dir.join("adapter")).unwrap();
    let adapter: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["target_modules"], serde_json::json!(["q_proj", "k_proj", "v_proj", "o_proj"]));
    let tokenizer = crate::testing::tiny_tokenizer(cfg.vocab_size).unwrap();
    crate::export::merged_hf_dir(&model, &tokenizer, &dir.join("merged")).unwrap();
    let saved = candle_core::safetensors::load(dir.join("merged/model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(saved["model.layers.0.mlp.experts.gate_up_proj_blocks"].dtype(), DType::U8);
    let reloaded = crate::load::load_model(&dir.join("merged"), &crate::load::LoadOptions::default()).unwrap();
    assert_eq!(reloaded.model.config(), &cfg);
    let (input, mask) = batch();
    let d = max_diff(
        &reloaded.model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap(),
        &model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap(),
    );
    assert!(d < 1e-4, "{d}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `generate` (KV-cache decoding, rows dropped as they finish) works unchanged for GPT-OSS:
/// batched greedy rollouts equal one prompt at a time, past the sliding window, with MXFP4
/// experts kept packed under LoRA.
#[test]
fn gpt_oss_generates_through_the_shared_decoding_path() {
    use crate::generate::{SamplingConfig, generate};
    let cfg = ModelConfig::tiny_gpt_oss();
    let (packed, _) = packed_and_dense(&CausalLm::random(&cfg, None, 11, DType::F32, &Device::Cpu).unwrap());
    let model = CausalLm::from_tensors(&cfg, packed, Some(&all_linear(2)), 0, DType::F32, &Device::Cpu).unwrap();
    randomize_lora_b(&model, 2);
    let tok = crate::testing::tiny_tokenizer(cfg.vocab_size).unwrap();
    let prompts = vec![vec![2u32, 10, 11, 12, 13, 2], vec![2, 40, 2], vec![2, 7, 8, 9, 20, 21, 22, 23, 2]];
    let sampling = SamplingConfig { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: 8, num_completions: 2, stop_token_ids: vec![] };
    let rng = || crate::rng::SamplerRng::new(0);
    let batched = generate(&model, &tok, &prompts, &sampling, &mut rng(), AdapterMode::Enabled).unwrap();
    assert_eq!(batched.len(), 6);
    for (p, prompt) in prompts.iter().enumerate() {
        let single = generate(&model, &tok, std::slice::from_ref(prompt), &sampling, &mut rng(), AdapterMode::Enabled).unwrap();
        assert_eq!(single[0].completion_ids, batched[2 * p].completion_ids);
        for (x, y) in single[0].logprobs.iter().zip(&batched[2 * p].logprobs) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
}

/// bf16 (the GPU dtype): every op of the GPT-OSS path runs in it, including MXFP4 unpacking into
/// bf16, and the logits stay close to f32's.
#[test]
fn gpt_oss_runs_in_bf16() {
    let cfg = ModelConfig::tiny_gpt_oss();
    let (packed, _) = packed_and_dense(&CausalLm::random(&cfg, None, 4, DType::F32, &Device::Cpu).unwrap());
    let lora = all_linear(2);
    let f32_model = CausalLm::from_tensors(&cfg, packed.clone(), Some(&lora), 0, DType::F32, &Device::Cpu).unwrap();
    let bf16_model = CausalLm::from_tensors(&cfg, packed, Some(&lora), 0, DType::BF16, &Device::Cpu).unwrap();
    let (input, mask) = batch();
    let a = f32_model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
    let b = bf16_model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    let real = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let d =
        (a - b.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap().broadcast_mul(&real).unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 0.25, "{d}");
    randomize_lora_b(&bf16_model, 1); // fresh adapters (B = 0) give A no gradient
    let grads = logprob_sum(&bf16_model, &input, &mask, AdapterMode::Enabled).unwrap().backward().unwrap();
    assert!(crate::gradcheck::missing_gradients(&bf16_model.trainable_vars(), &grads).unwrap().is_empty());
}

/// LoRA on the experts (PEFT's target_parameters) over packed MXFP4 experts: PEFT's names, only
/// adapters train, and merging (dense experts, no quantization_config) keeps the logits.
#[test]
fn expert_lora_trains_over_packed_experts_and_merges() {
    let cfg = ModelConfig::tiny_gpt_oss();
    let (packed, _) = packed_and_dense(&CausalLm::random(&cfg, None, 8, DType::F32, &Device::Cpu).unwrap());
    let lora = LoraConfig { target_parameters: crate::lora::EXPERT_PARAMETERS.map(String::from).to_vec(), ..all_linear(2) };
    let model = CausalLm::from_tensors(&cfg, packed, Some(&lora), 0, DType::F32, &Device::Cpu).unwrap();
    assert!(model.layers.iter().all(|l| matches!(&l.mlp, moe::FeedForward::Moe(m) if m.is_packed())));
    let names: Vec<String> = model.trainable_vars().into_iter().map(|(n, v)| format!("{n} {:?}", v.dims())).collect();
    // E = 4, rank 2: A [8, in], B [out, 8]; gate_up (in 32, out 64) nests under base_layer.
    assert!(names.contains(&"model.layers.0.mlp.experts.base_layer.lora_A.weight [8, 32]".to_string()), "{names:?}");
    assert!(names.contains(&"model.layers.0.mlp.experts.base_layer.lora_B.weight [64, 8]".to_string()), "{names:?}");
    assert!(names.contains(&"model.layers.2.mlp.experts.lora_A.weight [8, 32]".to_string()), "{names:?}");
    assert_eq!(names.len(), 3 * (4 + 2) * 2);
    randomize_lora_b(&model, 9);
    let (input, mask) = batch();
    let enabled = model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
    let disabled = model.forward(&input, &mask, None, AdapterMode::Disabled).unwrap();
    assert!(max_diff(&enabled, &disabled) > 1e-3);
    let merged: HashMap<String, Tensor> = model.merged_weights().unwrap().into_iter().collect();
    assert_eq!(merged["model.layers.1.mlp.experts.down_proj"].dims(), &[4, 32, 32]);
    assert!(!merged.keys().any(|n| n.ends_with("_blocks")));
    assert!(!model.hf_config_json().as_object().unwrap().contains_key("quantization_config"));
    let merged = CausalLm::from_tensors(&cfg, merged, None, 0, DType::F32, &Device::Cpu).unwrap();
    let d = max_diff(&merged.forward(&input, &mask, None, AdapterMode::Enabled).unwrap(), &enabled);
    assert!(d < 1e-4, "{d}");
    // Expert adapters on a dense model are an error naming the setting.
    let err = CausalLm::random(&ModelConfig::tiny_qwen3(), Some(&lora), 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("target_parameters"), "{err}");
    let bad = LoraConfig { target_parameters: vec!["mlp.experts.up_proj".into()], ..all_linear(2) };
    assert!(bad.validate().unwrap_err().to_string().contains("mlp.experts.up_proj"));
}
