//! The same models and GRPO step on a CUDA GPU. Built only with `--features cuda` and run by
//! `scripts/gpu-check.sh` on a machine with an NVIDIA GPU (CI has none, so without the feature
//! this file is empty). Every check compares the GPU against the CPU path that the CPU tests
//! already prove correct.

#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::*;
use sigmaforge_model::device::select_device;
use sigmaforge_model::gradcheck::missing_gradients;
use sigmaforge_model::lora::LoraConfig;
use sigmaforge_model::model::{AdapterMode, CausalLm, KvCache, ModelConfig, token_logprobs};
use sigmaforge_model::testing::tiny_tokenizer;
use sigmaforge_trainer::train::Trainer;

fn gpu() -> Device {
    let (device, desc) = select_device("cuda").unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e:#}"));
    eprintln!("device: {desc}");
    device
}

fn batch(device: &Device) -> (Tensor, Tensor) {
    let input = Tensor::new(&[[0u32, 0, 5, 9, 13, 2, 7], [3, 4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 11, 12, 60]], device).unwrap();
    let mask = Tensor::new(&[[0u32, 0, 1, 1, 1, 1, 1], [1; 7], [0, 0, 0, 0, 1, 1, 1]], device).unwrap();
    (input, mask)
}

/// Max |a - b| over the real (unmasked) positions of logits [B, T, V].
fn masked_max_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let m = mask.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    ((a - b).unwrap().broadcast_mul(&m).unwrap()).abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn logprob_sum(model: &CausalLm, input: &Tensor, mask: &Tensor) -> Tensor {
    let logits = model.forward(input, mask, None, AdapterMode::Enabled).unwrap();
    let t = input.dim(1).unwrap();
    let lp = token_logprobs(&logits.narrow(1, 0, t - 1).unwrap(), &input.narrow(1, 1, t - 1).unwrap()).unwrap();
    let m = (mask.narrow(1, 1, t - 1).unwrap() * mask.narrow(1, 0, t - 1).unwrap()).unwrap().to_dtype(lp.dtype()).unwrap();
    (lp * m).unwrap().sum_all().unwrap()
}

#[test]
fn gpu_logits_match_the_cpu_in_f32_and_bf16_stays_close() {
    let gpu = gpu();
    for cfg in [ModelConfig::tiny_qwen3(), ModelConfig::tiny_llama()] {
        let cpu_model = CausalLm::random(&cfg, None, 3, DType::F32, &Device::Cpu).unwrap();
        let gpu_model = CausalLm::random(&cfg, None, 3, DType::F32, &gpu).unwrap();
        let (ic, mc) = batch(&Device::Cpu);
        let (ig, mg) = batch(&gpu);
        let want = cpu_model.forward(&ic, &mc, None, AdapterMode::Enabled).unwrap();
        let got = gpu_model.forward(&ig, &mg, None, AdapterMode::Enabled).unwrap();
        let d = masked_max_diff(&want, &got, &mc);
        assert!(d < 1e-3, "{:?}: f32 GPU logits differ from the CPU by {d}", cfg.family);
        let bf16 = CausalLm::random(&cfg, None, 3, DType::BF16, &gpu).unwrap();
        let got = bf16.forward(&ig, &mg, None, AdapterMode::Enabled).unwrap();
        let d = masked_max_diff(&want, &got, &mc);
        assert!(d < 0.25, "{:?}: bf16 GPU logits differ from f32 by {d}", cfg.family);
    }
}

#[test]
fn every_parameter_gets_a_gradient_on_the_gpu_and_it_matches_the_cpu() {
    let gpu = gpu();
    let lora = LoraConfig { rank: 2, alpha: 4.0, target_modules: vec!["all-linear".into()], target_parameters: vec![] };
    for (cfg, lora) in [(ModelConfig::tiny_qwen3(), None), (ModelConfig::tiny_llama(), None), (ModelConfig::tiny_qwen3(), Some(&lora))] {
        let cpu_model = CausalLm::random(&cfg, lora, 5, DType::F32, &Device::Cpu).unwrap();
        let gpu_model = CausalLm::random(&cfg, lora, 5, DType::F32, &gpu).unwrap();
        let (ic, mc) = batch(&Device::Cpu);
        let (ig, mg) = batch(&gpu);
        let gc = logprob_sum(&cpu_model, &ic, &mc).backward().unwrap();
        let gg = logprob_sum(&gpu_model, &ig, &mg).backward().unwrap();
        let vars = gpu_model.trainable_vars();
        let missing = missing_gradients(&vars, &gg).unwrap();
        assert!(missing.is_empty(), "{:?}: no GPU gradient for {missing:?}", cfg.family);
        for ((name, vc), (_, vg)) in cpu_model.trainable_vars().iter().zip(&vars) {
            let a = gc.get(vc.as_tensor()).unwrap();
            let Some(b) = gg.get(vg.as_tensor()) else { continue };
            let b = b.to_device(&Device::Cpu).unwrap();
            let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-3);
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d / scale < 1e-3, "{:?} {name}: GPU gradient differs from the CPU by {d} (scale {scale})", cfg.family);
        }
    }
}

#[test]
fn kv_cache_decoding_equals_a_full_forward_on_the_gpu() {
    let gpu = gpu();
    for dtype in [DType::F32, DType::BF16] {
        let cfg = ModelConfig::tiny_qwen3();
        let model = CausalLm::random(&cfg, None, 4, dtype, &gpu).unwrap();
        let (input, mask) = batch(&gpu);
        let full = model.forward(&input, &mask, None, AdapterMode::Enabled).unwrap();
        let mut cache = KvCache::new(cfg.num_hidden_layers);
        let prefill = 4;
        let mut parts = vec![
            model
                .forward(&input.narrow(1, 0, prefill).unwrap(), &mask.narrow(1, 0, prefill).unwrap(), Some(&mut cache), AdapterMode::Enabled)
                .unwrap(),
        ];
        for t in prefill..input.dim(1).unwrap() {
            parts.push(
                model.forward(&input.narrow(1, t, 1).unwrap(), &mask.narrow(1, 0, t + 1).unwrap(), Some(&mut cache), AdapterMode::Enabled).unwrap(),
            );
        }
        let incremental = Tensor::cat(&parts, 1).unwrap();
        let d = masked_max_diff(&full, &incremental, &mask);
        let tol = if dtype == DType::F32 { 1e-4 } else { 0.1 };
        assert!(d < tol, "{dtype:?}: cached decoding differs from the full forward by {d}");
    }
}

/// GRPO steps on the GPU: bf16 weights with f32 master weights and moments, the toy reward
/// rises, checkpoints are written.
#[test]
fn grpo_trains_on_the_gpu_in_bf16() {
    let gpu = gpu();
    let cfg = tiny_config(
        "model: { path: test, dtype: bf16, device: cuda }\n\
         training: { steps: 30, prompts_per_step: 4, rollouts_per_prompt: 8, micro_batch_size: 16, passes_per_batch: 1 }\n\
         optimizer: { lr: 0.02, schedule: constant, warmup_steps: 0 }\ngrpo: { beta: 0.0 }\ncheckpoint: { every: 10, keep: 0 }",
    );
    let mc = ModelConfig::tiny_qwen3();
    let model = CausalLm::random(&mc, None, 11, DType::BF16, &gpu).unwrap();
    let tok = tiny_tokenizer(mc.vocab_size).unwrap();
    let dir = temp_run_dir("cuda-grpo");
    let env = Arc::new(TargetWords { max_new_tokens: cfg.generation.max_new_tokens });
    let mut t = Trainer::new(cfg, model, tok, env, &dir).unwrap();
    t.run(false, None).unwrap();
    let rewards: Vec<f64> = sigmaforge_trainer::metrics::read_all(&dir).unwrap().iter().map(|m| m.reward.mean).collect();
    let first = rewards[..5].iter().sum::<f64>() / 5.0;
    let last = rewards[rewards.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!("GPU bf16 GRPO: reward {first:.3} -> {last:.3}");
    assert!(last > first + 0.3, "GPU training did not learn: {first:.3} -> {last:.3}");
    assert!(dir.join("checkpoints").is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The 14B recipe's memory savers on the GPU (`training.memory`): activation checkpointing and
/// a chunked vocabulary projection give the plain backward's gradients, through as many
/// segments as data-parallel ranks expect (ZeRO-2 reduces at each).
#[test]
fn memory_savers_give_the_plain_gradients_on_the_gpu() {
    use sigmaforge_model::model::MemoryOptions;
    use sigmaforge_trainer::optim::GradAccumulator;
    let gpu = gpu();
    let cfg = ModelConfig::tiny_qwen3();
    let model = CausalLm::random(&cfg, None, 7, DType::F32, &gpu).unwrap();
    let (input, mask) = batch(&gpu);
    let (start, len) = (2, input.dim(1).unwrap() - 3);
    // Σ log p(next token) over window positions `range`, weighted by the targets' mask.
    let loss_of = |logits: &Tensor, range: std::ops::Range<usize>| -> anyhow::Result<Tensor> {
        let targets = input.narrow(1, start + 1 + range.start, range.len())?;
        let weights = mask.narrow(1, start + 1 + range.start, range.len())?.to_dtype(DType::F32)?;
        Ok((token_logprobs(logits, &targets)? * weights)?.sum_all()?)
    };
    let params = model.trainable_vars();
    let flat = |acc: &GradAccumulator| -> Vec<Vec<f32>> {
        acc.grads
            .iter()
            .map(|g| g.as_ref().expect("every parameter gets a gradient").flatten_all().unwrap().to_device(&Device::Cpu).unwrap().to_vec1().unwrap())
            .collect()
    };
    let mut plain = GradAccumulator::new(params.len());
    let hidden = model.forward_hidden(&input, &mask, None, AdapterMode::Enabled).unwrap();
    let logits = model.logits(&hidden.narrow(1, start, len).unwrap(), AdapterMode::Enabled).unwrap();
    plain.add(&loss_of(&logits, 0..len).unwrap().backward().unwrap(), &params).unwrap();
    let want = flat(&plain);
    let options = MemoryOptions { activation_checkpointing: true, logits_chunk: 2, ..Default::default() };
    let mut bounded = GradAccumulator::new(params.len());
    let mut segments = 0;
    model
        .backward_bounded(&input, &mask, AdapterMode::Enabled, (start, len), options, loss_of, |g, end| {
            segments += usize::from(end);
            bounded.add(g, &params)
        })
        .unwrap();
    assert_eq!(segments, model.backward_segments(options));
    for ((name, _), (a, b)) in params.iter().zip(want.iter().zip(flat(&bounded))) {
        let scale = a.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
        let d = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d / scale < 1e-4, "{name}: the bounded backward's gradient differs by {d} (scale {scale})");
    }
}

/// `training.memory.reference_on_host`: a KL reference kept in host memory and streamed to the
/// GPU a layer at a time gives the logits of the same reference held on the GPU.
#[test]
fn a_reference_streamed_from_host_memory_matches_one_on_the_gpu() {
    let gpu = gpu();
    for dtype in [DType::F32, DType::BF16] {
        let policy = CausalLm::random(&ModelConfig::tiny_qwen3(), None, 8, dtype, &gpu).unwrap();
        let resident = policy.frozen_copy().unwrap();
        let on_host = policy.frozen_copy_on(&Device::Cpu).unwrap();
        assert!(on_host.device().is_cpu());
        let (input, mask) = batch(&gpu);
        let want = resident.forward(&input, &mask, None, AdapterMode::Disabled).unwrap();
        let hidden = on_host.hidden_streamed(&input, &mask, &gpu).unwrap();
        assert!(hidden.device().is_cuda(), "the streamed forward runs on the GPU");
        let got = sigmaforge_model::model::streamed_logits(&hidden, &on_host.head_on(&gpu).unwrap()).unwrap();
        let d = masked_max_diff(&want, &got, &mask);
        let tol = if dtype == DType::F32 { 1e-4 } else { 0.05 };
        assert!(d < tol, "{dtype:?}: the streamed reference differs from the resident one by {d}");
    }
}
