use std::collections::HashMap;

use candle_core::{D, DType, Device, IndexOp, Tensor};

use super::*;
use crate::gradcheck::{check_gradients, missing_gradients};
use crate::lora::LoraConfig;
use crate::rng::SamplerRng;

fn all_linear(rank: usize) -> LoraConfig {
    LoraConfig { rank, alpha: 2.0 * rank as f64, target_modules: vec!["all-linear".into()], target_parameters: vec![] }
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let w = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), w), &Device::Cpu).unwrap()
}

/// Sum of next-token log-probs where both the predicting position and the target are real
/// tokens (what GRPO uses: completion tokens predicted from real context).
fn logprob_sum(model: &CausalLm, input: &Tensor, mask: &Tensor, mode: AdapterMode) -> Result<Tensor> {
    let logits = model.forward(input, mask, None, mode)?;
    let t = input.dim(1)?;
    let lp = token_logprobs(&logits.narrow(1, 0, t - 1)?, &input.narrow(1, 1, t - 1)?)?;
    let m = (mask.narrow(1, 1, t - 1)? * mask.narrow(1, 0, t - 1)?)?.to_dtype(lp.dtype())?;
    Ok((lp * m)?.sum_all()?)
}

fn batch() -> (Tensor, Tensor) {
    let input = ids(&[&[0, 0, 5, 9, 13, 2, 7], &[3, 4, 5, 6, 7, 8, 9], &[0, 0, 0, 0, 11, 12, 60]]);
    let mask = ids(&[&[0, 0, 1, 1, 1, 1, 1], &[1; 7], &[0, 0, 0, 0, 1, 1, 1]]);
    (input, mask)
}

/// Give every LoRA B a random value (fresh adapters start at B = 0, where A gets no gradient).
fn randomize_lora_b(model: &CausalLm, seed: u64) {
    let mut rng = SamplerRng::new(seed);
    let mut values = HashMap::new();
    for (name, var) in model.trainable_vars() {
        let t = if name.contains("lora_B") {
            let v: Vec<f64> = (0..var.elem_count()).map(|_| 0.3 * rng.normal()).collect();
            Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap()
        } else {
            var.as_tensor().clone()
        };
        values.insert(name, t);
    }
    model.load_trainable(&values).unwrap();
}

#[test]
fn every_parameter_gets_a_gradient_under_full_fine_tuning() {
    for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama(), ModelConfig::tiny_gpt_oss()] {
        let model = CausalLm::random(&cfg, None, 1, DType::F32, &Device::Cpu).unwrap();
        let vars = model.trainable_vars();
        assert_eq!(vars.len(), cfg.weight_shapes().len(), "{:?}", cfg.family);
        assert_eq!(model.num_trainable_parameters(), cfg.num_parameters());
        let (input, mask) = batch();
        let grads = logprob_sum(&model, &input, &mask, AdapterMode::Enabled).unwrap().backward().unwrap();
        let missing = missing_gradients(&vars, &grads).unwrap();
        assert!(missing.is_empty(), "{:?}: no gradient for {missing:?}", cfg.family);
    }
}

#[test]
fn under_lora_only_the_adapters_train_and_all_get_gradients() {
    for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama(), ModelConfig::tiny_gpt_oss()] {
        let model = CausalLm::random(&cfg, Some(&all_linear(4)), 1, DType::F32, &Device::Cpu).unwrap();
        let vars = model.trainable_vars();
        // GPT-OSS: the four attention projections (its experts and router are no LoRA targets).
        let per_layer = if cfg.moe.is_some() { 4 } else { 7 };
        assert_eq!(vars.len(), 2 * per_layer * cfg.num_hidden_layers);
        assert!(vars.iter().all(|(n, _)| n.contains(".lora_A.") || n.contains(".lora_B.")));
        randomize_lora_b(&model, 5);
        let (input, mask) = batch();
        let grads = logprob_sum(&model, &input, &mask, AdapterMode::Enabled).unwrap().backward().unwrap();
        assert!(missing_gradients(&vars, &grads).unwrap().is_empty());
    }
    // Only the targeted modules get adapters.
    let cfg = ModelConfig::tiny_qwen3();
    let lora = LoraConfig { rank: 2, alpha: 4.0, target_modules: vec!["q_proj".into(), "v_proj".into()], target_parameters: vec![] };
    let model = CausalLm::random(&cfg, Some(&lora), 1, DType::F32, &Device::Cpu).unwrap();
    let names: Vec<String> = model.trainable_vars().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 2 * 2 * cfg.num_hidden_layers);
    assert!(names.iter().all(|n| n.contains("q_proj") || n.contains("v_proj")));
    assert!(names.contains(&"model.layers.1.self_attn.v_proj.lora_B.weight".to_string()));
}

#[test]
fn finite_differences_agree_with_backprop_in_f64() {
    let (input, mask) = batch();
    for (cfg, lora) in [
        (ModelConfig::tiny_qwen3(), None),
        (ModelConfig::tiny_llama(), None),
        (ModelConfig::tiny_qwen3(), Some(all_linear(2))),
        (ModelConfig::tiny_llama(), Some(all_linear(2))),
        // Through the router's top-k softmax, the clamped SwiGLU experts and the sinks.
        (ModelConfig::tiny_gpt_oss(), None),
        (ModelConfig::tiny_gpt_oss(), Some(all_linear(2))),
        (
            ModelConfig::tiny_gpt_oss(),
            Some(LoraConfig { target_parameters: crate::lora::EXPERT_PARAMETERS.map(String::from).to_vec(), ..all_linear(2) }),
        ),
    ] {
        let model = CausalLm::random(&cfg, lora.as_ref(), 3, DType::F64, &Device::Cpu).unwrap();
        if lora.is_some() {
            randomize_lora_b(&model, 4);
        }
        let vars = model.trainable_vars();
        let report = check_gradients(&vars, || logprob_sum(&model, &input, &mask, AdapterMode::Enabled), 3, 1e-6, 11).unwrap();
        assert_eq!(report.checked, 3 * vars.len());
        // GPT-OSS has more small gradients (sinks, router, biases), where the central difference's
        // round-off (~1e-9 absolute at eps 1e-6) is a larger relative error.
        let tolerance = if cfg.moe.is_some() { 1e-4 } else { 1e-5 };
        println!("{:?} lora={}: {report:?}", cfg.family, lora.is_some());
        assert!(report.max_rel_err < tolerance, "{:?} lora={}: {report:?}", cfg.family, lora.is_some());
    }
}

#[test]
fn left_padded_rows_give_the_same_logits_as_unpadded() {
    for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama(), ModelConfig::tiny_gpt_oss()] {
        let model = CausalLm::random(&cfg, None, 2, DType::F32, &Device::Cpu).unwrap();
        let seq: &[u32] = &[5, 9, 13, 2, 7];
        let alone = model.forward(&ids(&[seq]), &ids(&[&[1; 5]]), None, AdapterMode::Enabled).unwrap();
        let padded = model
            .forward(
                &ids(&[&[0, 0, 0, 5, 9, 13, 2, 7], &[1, 2, 3, 4, 5, 6, 7, 8]]),
                &ids(&[&[0, 0, 0, 1, 1, 1, 1, 1], &[1; 8]]),
                None,
                AdapterMode::Enabled,
            )
            .unwrap();
        let diff = (alone.i(0).unwrap() - padded.i((0, 3..)).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{:?}: {diff}", cfg.family);
    }
}

#[test]
fn kv_cache_decoding_equals_a_full_forward() {
    for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama(), ModelConfig::tiny_gpt_oss()] {
        let model = CausalLm::random(&cfg, Some(&all_linear(2)), 4, DType::F32, &Device::Cpu).unwrap();
        randomize_lora_b(&model, 1);
        let (input, mask) = batch();
        let full = model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
        let mut cache = KvCache::new(cfg.num_hidden_layers);
        let prefill = 4;
        let mut parts = vec![
            model
                .forward(&input.narrow(1, 0, prefill).unwrap(), &mask.narrow(1, 0, prefill).unwrap(), Some(&mut cache), AdapterMode::Enabled)
                .unwrap(),
        ];
        for t in prefill..input.dim(1).unwrap() {
            let step =
                model.forward(&input.narrow(1, t, 1).unwrap(), &mask.narrow(1, 0, t + 1).unwrap(), Some(&mut cache), AdapterMode::Enabled).unwrap();
            parts.push(step);
        }
        assert_eq!(cache.seq_len(), input.dim(1).unwrap());
        let incremental = Tensor::cat(&parts, 1).unwrap();
        // Compare only real (unmasked) query positions; pad rows attend to nothing real.
        let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        let diff = ((full - incremental).unwrap().broadcast_mul(&m).unwrap()).abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{:?}: {diff}", cfg.family);
        // forward_last is the last position of forward.
        let last = model.forward_last(&input, &mask, None, AdapterMode::Enabled).unwrap();
        let t = input.dim(1).unwrap();
        let full = model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
        let d = (last - full.i((.., t - 1)).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
    }
}

#[test]
fn cache_rows_can_be_dropped_mid_decode() {
    let cfg = ModelConfig::tiny_qwen3();
    let model = CausalLm::random(&cfg, None, 4, DType::F32, &Device::Cpu).unwrap();
    let (input, mask) = batch();
    let mut cache = KvCache::new(cfg.num_hidden_layers);
    model.forward(&input.narrow(1, 0, 6).unwrap(), &mask.narrow(1, 0, 6).unwrap(), Some(&mut cache), AdapterMode::Enabled).unwrap();
    cache.select_rows(&[2, 0]).unwrap();
    let keep = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
    let step = model
        .forward(
            &input.index_select(&keep, 0).unwrap().narrow(1, 6, 1).unwrap(),
            &mask.index_select(&keep, 0).unwrap(),
            Some(&mut cache),
            AdapterMode::Enabled,
        )
        .unwrap();
    let full = model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
    let expect = full.index_select(&keep, 0).unwrap().narrow(1, 6, 1).unwrap();
    let d = (step - expect).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "{d}");
}

#[test]
fn disabled_adapters_give_the_base_model_and_merging_preserves_the_output() {
    let cfg = ModelConfig::tiny_llama();
    let base = CausalLm::random(&cfg, None, 8, DType::F32, &Device::Cpu).unwrap();
    let weights: HashMap<String, Tensor> = base.merged_weights().unwrap().into_iter().collect();
    let lora = CausalLm::from_tensors(&cfg, weights, Some(&all_linear(2)), 0, DType::F32, &Device::Cpu).unwrap();
    randomize_lora_b(&lora, 2);
    let (input, mask) = batch();
    let max_diff = |a: &Tensor, b: &Tensor| -> f32 { (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() };
    let reference = base.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
    let disabled = lora.forward(&input, &mask, None, AdapterMode::Disabled).unwrap();
    let enabled = lora.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
    assert!(max_diff(&reference, &disabled) < 1e-6);
    assert!(max_diff(&reference, &enabled) > 1e-3);
    let merged: HashMap<String, Tensor> = lora.merged_weights().unwrap().into_iter().collect();
    let merged = CausalLm::from_tensors(&cfg, merged, None, 0, DType::F32, &Device::Cpu).unwrap();
    let out = merged.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
    assert!(max_diff(&out, &enabled) < 1e-4, "{}", max_diff(&out, &enabled));
    let frozen = lora.frozen_copy().unwrap();
    assert!(frozen.trainable_vars().is_empty());
    assert!(max_diff(&frozen.forward(&input, &mask, None, AdapterMode::Enabled).unwrap(), &enabled) < 1e-4);
}

#[test]
fn bad_weights_and_inputs_are_clear_errors() {
    let cfg = ModelConfig::tiny_qwen3();
    let model = CausalLm::random(&cfg, None, 1, DType::F32, &Device::Cpu).unwrap();
    let mut w: HashMap<String, Tensor> = model.merged_weights().unwrap().into_iter().collect();
    w.remove("model.layers.1.mlp.up_proj.weight");
    let err = CausalLm::from_tensors(&cfg, w.clone(), None, 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
    w.insert("model.layers.1.mlp.up_proj.weight".into(), Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap());
    let err = CausalLm::from_tensors(&cfg, w.clone(), None, 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("shape"), "{err}");
    let llama_w: HashMap<String, Tensor> = model.merged_weights().unwrap().into_iter().collect();
    let mut llama_cfg = cfg.clone();
    llama_cfg.family = Family::Llama;
    let err = CausalLm::from_tensors(&llama_cfg, llama_w, None, 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("q_norm"), "{err}");

    let (input, mask) = batch();
    let err = model.forward(&input, &mask.narrow(1, 0, 5).unwrap(), None, AdapterMode::Enabled).unwrap_err().to_string();
    assert!(err.contains("attention_mask"), "{err}");
    let mut missing = HashMap::new();
    missing.insert("x".to_string(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
    assert!(model.load_trainable(&missing).unwrap_err().to_string().contains("missing trainable tensor"));
    let bad_lora = LoraConfig { rank: 2, alpha: 1.0, target_modules: vec!["qproj".into()], target_parameters: vec![] };
    let err = CausalLm::random(&cfg, Some(&bad_lora), 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("qproj"), "{err}");
}

#[test]
fn logprob_and_entropy_helpers_match_direct_computation() {
    let logits = Tensor::new(&[[[1.0f64, 2.0, 3.0], [0.0, 0.0, 0.0]]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[[2u32, 0]], &Device::Cpu).unwrap();
    let lp = token_logprobs(&logits, &targets).unwrap().to_vec2::<f64>().unwrap();
    let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    assert!((lp[0][0] - (3.0 - lse)).abs() < 1e-12);
    assert!((lp[0][1] + 3f64.ln()).abs() < 1e-12);
    let h = token_entropy(&logits).unwrap().to_vec2::<f64>().unwrap();
    assert!((h[0][1] - 3f64.ln()).abs() < 1e-12);
    let _ = D::Minus1;
}

/// Under LoRA a quantised base passes the adapters the gradient of its dequantised weights
/// (`QuantMatmul`'s backward): the same gradients as a dense model holding those weights, up to
/// the forward's 8-bit activations; and finite differences through the quantised model agree.
#[test]
fn lora_through_a_quantised_base_gets_the_dequantised_weights_gradients() {
    use candle_core::quantized::GgmlDType;
    let cfg = ModelConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        ..ModelConfig::tiny_qwen3()
    };
    let lora = all_linear(4);
    let source: HashMap<String, Tensor> =
        CausalLm::random(&cfg, None, 8, DType::F32, &Device::Cpu).unwrap().merged_weights().unwrap().into_iter().collect();
    let (dense, quantized) = apply_base_quant(BaseQuant::Q8_0, true, source, HashMap::new(), &Device::Cpu).unwrap();
    assert!(quantized.values().all(|q| q.dtype() == GgmlDType::Q8_0));
    // The dense twin holds exactly the dequantised weights.
    let mut twin = dense.clone();
    for (name, q) in &quantized {
        twin.insert(name.clone(), q.dequantize(&Device::Cpu).unwrap());
    }
    let quant = CausalLm::from_quantized_tensors(&cfg, dense, quantized, Some(&lora), 3, true, DType::F32, &Device::Cpu).unwrap();
    let plain = CausalLm::from_tensors(&cfg, twin.clone(), Some(&lora), 3, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(quant.quantized_weight_count(), 7 * cfg.num_hidden_layers + 1);
    randomize_lora_b(&quant, 5);
    randomize_lora_b(&plain, 5);
    let (input, mask) = batch();
    let loss = || logprob_sum(&quant, &input, &mask, AdapterMode::Enabled);
    let grads_q = loss().unwrap().backward().unwrap();
    let grads_p = logprob_sum(&plain, &input, &mask, AdapterMode::Enabled).unwrap().backward().unwrap();
    let vars_q = quant.trainable_vars();
    assert!(missing_gradients(&vars_q, &grads_q).unwrap().is_empty());
    for ((name, vq), (_, vp)) in vars_q.iter().zip(plain.trainable_vars()) {
        let gq = grads_q.get(vq.as_tensor()).unwrap();
        let gp = grads_p.get(vp.as_tensor()).unwrap();
        let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let rel = norm(&(gq - gp).unwrap()) / norm(gp).max(1e-12);
        assert!(rel < 0.03, "{name}: relative gradient difference {rel}");
    }
    // The gradients the quantised model passes on are those of its dequantised weights, and
    // those are exact: central differences on the dense twin in f64 (the quantised forward
    // itself steps with its 8-bit activations, so it has no useful finite differences).
    let plain64 = CausalLm::from_tensors(&cfg, twin, Some(&lora), 3, DType::F64, &Device::Cpu).unwrap();
    randomize_lora_b(&plain64, 5);
    let vars = plain64.trainable_vars();
    let report = check_gradients(&vars, || logprob_sum(&plain64, &input, &mask, AdapterMode::Enabled), 2, 1e-6, 12).unwrap();
    assert!(report.max_rel_err < 1e-5, "{report:?}");
}

#[path = "gpt_oss_tests.rs"]
mod gpt_oss;
