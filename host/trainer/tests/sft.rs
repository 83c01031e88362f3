//! Supervised fine-tuning on reference answers: the loss covers answer tokens only, a tiny
//! model learns a toy task's references (loss falls, greedy exact match rises), and a resumed
//! SFT run ends with the same weights as an uninterrupted one.

mod common;

use candle_core::{DType, Device};
use common::{temp_run_dir, tiny_config, tiny_config_layers};
use sigmaforge_model::generate::{SamplingConfig, generate};
use sigmaforge_model::load::{ChatMessage, Tokenizer};
use sigmaforge_model::model::{AdapterMode, CausalLm, ModelConfig};
use sigmaforge_model::rng::SamplerRng;
use sigmaforge_model::testing::{CHATML_BYTE_VOCAB, CHATML_IM_END, chatml_byte_tokenizer, harmony_byte_tokenizer};
use sigmaforge_trainer::checkpoint;
use sigmaforge_trainer::config::RunConfig;
use sigmaforge_trainer::sft::{SftExample, SftTrainer, encode_example, read_metrics};

/// A toy task with reference answers: the prompt names an animal, the answer is its sound.
fn toy_examples() -> Vec<SftExample> {
    let pairs = [("cat", "meow"), ("dog", "woof"), ("cow", "moo"), ("duck", "quack"), ("owl", "hoot"), ("bee", "buzz")];
    pairs
        .iter()
        .map(|(animal, sound)| SftExample {
            task_id: format!("toy-{animal}"),
            messages: vec![ChatMessage::new("system", "sounds"), ChatMessage::new("user", *animal)],
            answer: sound.to_string(),
        })
        .collect()
}

fn model_config() -> ModelConfig {
    let mut mc = ModelConfig::tiny_qwen3();
    mc.vocab_size = CHATML_BYTE_VOCAB;
    mc.eos_token_ids = vec![CHATML_IM_END];
    mc
}

fn sft_config(overrides: &str) -> RunConfig {
    let base = "sft: { steps: 60, batch_size: 6, micro_batch_size: 4, lr: 0.01, schedule: constant, max_grad_norm: 1.0, max_answer_tokens: 32 }\n\
                checkpoint: { every: 10, keep: 0 }";
    tiny_config_layers(&[base, overrides])
}

fn trainer(cfg: &RunConfig, dir: &std::path::Path) -> SftTrainer {
    let model = CausalLm::random(&model_config(), cfg.lora(), 11, DType::F32, &Device::Cpu).unwrap();
    SftTrainer::new(cfg.clone(), model, chatml_byte_tokenizer().unwrap(), &toy_examples(), dir).unwrap()
}

/// Share of examples whose greedy answer is exactly the reference.
fn exact_match(model: &CausalLm, tok: &Tokenizer) -> f64 {
    let examples = toy_examples();
    let prompts: Vec<Vec<u32>> =
        examples.iter().map(|e| tok.encode(&tok.apply_chat_template(&e.messages, true, None).unwrap(), false).unwrap()).collect();
    let cfg = SamplingConfig { temperature: 0.0, max_new_tokens: 12, ..Default::default() };
    let out = generate(model, tok, &prompts, &cfg, &mut SamplerRng::new(0), AdapterMode::Enabled).unwrap();
    out.iter().zip(&examples).filter(|(r, e)| r.text.trim() == e.answer).count() as f64 / examples.len() as f64
}

#[test]
fn the_answer_is_what_the_template_adds_after_the_prompt_and_ends_with_the_end_of_turn() {
    let tok = chatml_byte_tokenizer().unwrap();
    let ex = &toy_examples()[0];
    let e = encode_example(&tok, ex, 64).unwrap();
    let prompt_text = tok.decode(&e.prompt, false).unwrap();
    assert!(prompt_text.ends_with("<|im_start|>assistant\n"), "{prompt_text:?}");
    assert!(!prompt_text.contains("meow"), "the prompt holds no answer token");
    // The answer tokens: "meow" then <|im_end|> — and not the newline the template writes after it.
    assert_eq!(tok.decode(&e.answer, false).unwrap(), "meow<|im_end|>");
    assert_eq!(*e.answer.last().unwrap(), CHATML_IM_END);
    // Cut to max_answer_tokens.
    assert_eq!(encode_example(&tok, ex, 2).unwrap().answer.len(), 2);
}

/// gpt-oss: the answer to learn is a final-channel message ending in <|return|>, the stop token,
/// after a harmony prompt that ends with `<|start|>assistant`.
#[test]
fn a_harmony_answer_is_the_final_channel_up_to_return() {
    let tok = harmony_byte_tokenizer().unwrap();
    let e = encode_example(&tok, &toy_examples()[0], 64).unwrap();
    assert!(tok.decode(&e.prompt, false).unwrap().ends_with("<|start|>user<|message|>cat<|end|><|start|>assistant"));
    assert_eq!(tok.decode(&e.answer, false).unwrap(), "<|channel|>final<|message|>meow<|return|>");
    assert_eq!(e.answer.last().copied(), tok.token_to_id("<|return|>"));
}

#[test]
fn the_loss_covers_answer_tokens_only() {
    // Changing the prompt's weights' targets cannot matter: the loss of an example equals the
    // mean NLL of its answer tokens computed by hand from the model's logits.
    let cfg = sft_config("");
    let dir = temp_run_dir("sft-mask");
    let t = trainer(&cfg, &dir);
    let tok = t.tokenizer().clone();
    let e = encode_example(&tok, &toy_examples()[1], 32).unwrap();
    let (loss, _) = t.evaluate(&[1]).unwrap();
    // By hand: the full sequence through the model, log-softmax at the positions that predict
    // the answer tokens only.
    let ids: Vec<u32> = e.prompt.iter().chain(&e.answer).copied().collect();
    let n = ids.len();
    let input = candle_core::Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu).unwrap();
    let mask = candle_core::Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
    let logits = t.model().forward(&input, &mask, None, AdapterMode::Enabled).unwrap().squeeze(0).unwrap();
    let logp = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap();
    let p = e.prompt.len();
    let answer_nll: f64 = (0..e.answer.len()).map(|j| -(logp[p - 1 + j][ids[p + j] as usize] as f64)).sum::<f64>() / e.answer.len() as f64;
    let all_nll: f64 = (1..n).map(|j| -(logp[j - 1][ids[j] as usize] as f64)).sum::<f64>() / (n - 1) as f64;
    assert!((loss - answer_nll).abs() < 1e-4, "loss {loss} vs answer-only NLL {answer_nll}");
    assert!((loss - all_nll).abs() > 1e-3, "the test must tell the two apart: {loss} vs whole-sequence NLL {all_nll}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_tiny_model_learns_the_reference_answers_full_and_lora() {
    for overrides in [
        "",
        "finetune: lora\nlora: { rank: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj] }\nsft: { lr: 0.02, steps: 150 }",
    ] {
        let cfg = sft_config(overrides);
        let dir = temp_run_dir("sft-learn");
        let mut t = trainer(&cfg, &dir);
        let all: Vec<usize> = (0..6).collect();
        let (loss0, acc0) = t.evaluate(&all).unwrap();
        let em0 = exact_match(t.model(), t.tokenizer());
        let summary = t.run(false, None).unwrap();
        assert!(summary.finished);
        let (loss1, acc1) = t.evaluate(&all).unwrap();
        let em1 = exact_match(t.model(), t.tokenizer());
        eprintln!("{overrides:?}: loss {loss0:.3} → {loss1:.3}, token accuracy {acc0:.3} → {acc1:.3}, exact match {em0} → {em1}");
        assert!(loss1 < loss0 * 0.25, "loss did not fall: {loss0} → {loss1}");
        assert!(acc1 > acc0 && acc1 > 0.9, "token accuracy {acc0} → {acc1}");
        assert_eq!(em0, 0.0);
        assert!(em1 >= 5.0 / 6.0, "exact match after SFT: {em1}");
        // One metrics record per step, with the documented fields.
        let m = read_metrics(&dir).unwrap();
        assert_eq!(m.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=cfg.sft.as_ref().unwrap().steps).collect::<Vec<_>>());
        assert!(m.iter().all(|m| m.tokens > 0 && m.tokens_per_s > 0.0 && m.lr > 0.0 && m.grad_norm.is_finite()));
        assert!(dir.join("metrics.png").is_file());
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn a_resumed_sft_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let cfg = sft_config("sft: { steps: 20 }\ncheckpoint: { every: 5, keep: 0 }");
    let straight_dir = temp_run_dir("sft-straight");
    let mut straight = trainer(&cfg, &straight_dir);
    straight.run(false, None).unwrap();

    let split_dir = temp_run_dir("sft-split");
    let mut first = trainer(&cfg, &split_dir);
    // Stops after step 7: the newest checkpoint is step 5; steps 6 and 7 run again.
    assert!(!first.run(false, Some(7)).unwrap().finished);
    drop(first);
    let mut second = trainer(&cfg, &split_dir);
    second.restore(&checkpoint::load(&split_dir, &Device::Cpu).unwrap()).unwrap();
    assert_eq!(second.step(), 5);
    second.run(false, None).unwrap();

    let flat = |t: &SftTrainer| -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<_> =
            t.model().trainable_vars().into_iter().map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let (a, b) = (flat(&straight), flat(&second));
    for ((name, wa), (_, wb)) in a.iter().zip(&b) {
        let max = wa.iter().zip(wb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(max <= 1e-6, "{name} differs by {max} after resume");
    }
    let init = flat(&trainer(&cfg, &temp_run_dir("sft-init")));
    assert!(a.iter().zip(&init).any(|((_, x), (_, y))| x != y), "the weights never moved");
    // The resumed run's metrics hold each step once.
    let m = read_metrics(&split_dir).unwrap();
    assert_eq!(m.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    for d in [straight_dir, split_dir] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn a_config_without_an_sft_section_or_examples_is_refused() {
    let cfg = tiny_config("");
    let model = CausalLm::random(&model_config(), None, 1, DType::F32, &Device::Cpu).unwrap();
    let err = SftTrainer::new(cfg, model, chatml_byte_tokenizer().unwrap(), &toy_examples(), &temp_run_dir("sft-none")).err().unwrap();
    assert!(format!("{err:#}").contains("no `sft:` section"), "{err:#}");
    let cfg = sft_config("");
    let model = CausalLm::random(&model_config(), None, 1, DType::F32, &Device::Cpu).unwrap();
    let err = SftTrainer::new(cfg, model, chatml_byte_tokenizer().unwrap(), &[], &temp_run_dir("sft-empty")).err().unwrap();
    assert!(format!("{err:#}").contains("no examples"), "{err:#}");
}

#[test]
fn packed_micro_batches_give_the_weights_and_metrics_of_padded_ones() {
    // `sft.pack: true` lays a micro-batch's examples out one after the other in one row, each
    // seeing only itself; padded rows (the default) must learn the same, with and without the
    // memory savers.
    for memory in ["", "training: { memory: { activation_checkpointing: true, logits_chunk: 2 } }"] {
        let padded_cfg = sft_config(&format!("sft: {{ steps: 3 }}\n{memory}"));
        let packed_cfg = sft_config(&format!("sft: {{ steps: 3, pack: true }}\n{memory}"));
        assert!(packed_cfg.sft.as_ref().unwrap().pack && !padded_cfg.sft.as_ref().unwrap().pack);
        let (padded_dir, packed_dir) = (temp_run_dir("sft-padded"), temp_run_dir("sft-packed"));
        let mut padded = trainer(&padded_cfg, &padded_dir);
        let mut packed = trainer(&packed_cfg, &packed_dir);
        for _ in 0..3 {
            let (p, b) = (padded.train_step().unwrap(), packed.train_step().unwrap());
            assert!((p.loss - b.loss).abs() <= 1e-5 * p.loss.abs().max(1.0), "loss {} vs {}", p.loss, b.loss);
            assert!((p.grad_norm - b.grad_norm).abs() <= 1e-4 * p.grad_norm.max(1.0), "grad norm {} vs {}", p.grad_norm, b.grad_norm);
        }
        for ((name, wa), (_, wb)) in sorted_vars(&padded).iter().zip(&sorted_vars(&packed)) {
            let max = wa.iter().zip(wb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            // Summation orders differ (one row against several), and AdamW's first steps move a
            // weight by ~lr whatever the gradient's size, so rounding shows at ~1e-5 of lr 0.01.
            assert!(max <= 1e-4, "{name} differs by {max} between padded and packed micro-batches ({memory:?})");
        }
        for d in [padded_dir, packed_dir] {
            std::fs::remove_dir_all(d).ok();
        }
    }
}

fn sorted_vars(t: &SftTrainer) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<_> =
        t.model().trainable_vars().into_iter().map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn the_memory_savers_give_the_weights_and_metrics_of_the_plain_update() {
    // `training.memory` (layer-by-layer recompute, chunked logits) must change only the peak
    // memory of an SFT step, never what it learns: full and LoRA, 3 steps each.
    for lora in ["", "finetune: lora\nlora: { rank: 4, alpha: 8, target_modules: [q_proj, v_proj, down_proj] }"] {
        let plain_cfg = sft_config(&format!("sft: {{ steps: 3 }}\n{lora}"));
        let bounded_cfg =
            sft_config(&format!("sft: {{ steps: 3 }}\ntraining: {{ memory: {{ activation_checkpointing: true, logits_chunk: 2 }} }}\n{lora}"));
        assert!(bounded_cfg.training.memory.enabled() && !plain_cfg.training.memory.enabled());
        let (plain_dir, bounded_dir) = (temp_run_dir("sft-plain"), temp_run_dir("sft-bounded"));
        let mut plain = trainer(&plain_cfg, &plain_dir);
        let mut bounded = trainer(&bounded_cfg, &bounded_dir);
        for _ in 0..3 {
            let (p, b) = (plain.train_step().unwrap(), bounded.train_step().unwrap());
            assert!((p.loss - b.loss).abs() <= 1e-5 * p.loss.abs().max(1.0), "loss {} vs {}", p.loss, b.loss);
            assert!((p.grad_norm - b.grad_norm).abs() <= 1e-4 * p.grad_norm.max(1.0), "grad norm {} vs {}", p.grad_norm, b.grad_norm);
            assert!((p.token_accuracy - b.token_accuracy).abs() <= 0.05, "token accuracy {} vs {}", p.token_accuracy, b.token_accuracy);
        }
        let vars = |t: &SftTrainer| -> Vec<(String, Vec<f32>)> {
            let mut v: Vec<_> =
                t.model().trainable_vars().into_iter().map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        for ((name, wa), (_, wb)) in vars(&plain).iter().zip(&vars(&bounded)) {
            let max = wa.iter().zip(wb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(max <= 1e-5, "{name} differs by {max} between the plain and the bounded update ({lora:?})");
        }
        for d in [plain_dir, bounded_dir] {
            std::fs::remove_dir_all(d).ok();
        }
    }
}

#[test]
fn answers_longer_than_the_limit_are_left_out_or_cut_as_configured() {
    // Byte tokens: "quack" + <|im_end|> is 6 tokens, every other answer at most 5.
    let dir = temp_run_dir("sft-long");
    let skip = trainer(&sft_config("sft: { max_answer_tokens: 5, long_answers: skip }"), &dir);
    assert_eq!((skip.examples(), skip.skipped_long()), (5, 1));
    let note = skip.skipped_note().unwrap();
    assert!(note.contains("1 of 6") && note.contains("sft.max_answer_tokens = 5"), "{note}");
    let cut = trainer(&sft_config("sft: { max_answer_tokens: 5 }"), &dir);
    assert_eq!((cut.examples(), cut.skipped_long()), (6, 0));
    assert!(cut.skipped_note().is_none());
    let cfg = sft_config("sft: { max_answer_tokens: 2, long_answers: skip }");
    let model = CausalLm::random(&model_config(), None, 1, DType::F32, &Device::Cpu).unwrap();
    let err = SftTrainer::new(cfg, model, chatml_byte_tokenizer().unwrap(), &toy_examples(), &dir).err().unwrap();
    assert!(format!("{err:#}").contains("all 6 reference answers are longer than sft.max_answer_tokens = 2"), "{err:#}");
    std::fs::remove_dir_all(dir).ok();
}
