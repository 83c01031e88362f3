//! `training.memory` (activation checkpointing, chunked vocabulary projection, a KL reference
//! kept in host memory) changes how much memory the update needs, not what it computes: the
//! same run with and without it ends at the same weights and logs the same loss statistics.

mod common;

use common::*;

fn run(overrides: &str, name: &str) -> (Vec<(String, Vec<f32>)>, Vec<sigmaforge_trainer::metrics::StepMetrics>) {
    let cfg = tiny_config(overrides);
    let dir = temp_run_dir(name);
    let mut t = tiny_trainer(&cfg, &dir);
    t.run(false, None).unwrap();
    let m = sigmaforge_trainer::metrics::read_all(&dir).unwrap();
    let w = weights(&t);
    std::fs::remove_dir_all(&dir).unwrap();
    (w, m)
}

const BOUNDED: [&str; 3] = ["{ activation_checkpointing: true }", "{ logits_chunk: 2 }", "{ activation_checkpointing: true, logits_chunk: 4 }"];

/// `training`: the inside of the `training:` map; `rest`: other sections; `memories`: the
/// `training.memory` maps to compare with none.
fn assert_same(training: &str, rest: &str, name: &str, memories: &[&str]) {
    let (w0, m0) = run(&format!("training: {{ {training} }}\n{rest}"), &format!("{name}-plain"));
    // The KL term must matter, or equal KL statistics would prove nothing about the reference.
    assert!(m0.last().unwrap().kl > 1e-4, "{name}: KL {} is too small to compare", m0.last().unwrap().kl);
    for memory in memories {
        let (w1, m1) = run(&format!("training: {{ {training}, memory: {memory} }}\n{rest}"), &format!("{name}-bounded"));
        assert_same_training(&format!("{name} with memory {memory}"), (&w0, &m0), (&w1, &m1));
    }
}

/// Two runs ended at the same weights (within 1e-4) with the same loss statistics and rollouts.
fn assert_same_training(what: &str, (w0, m0): Run<'_>, (w1, m1): Run<'_>) {
    let mut worst = 0f32;
    for ((n0, a), (n1, b)) in w0.iter().zip(w1) {
        assert_eq!(n0, n1);
        worst = a.iter().zip(b).fold(worst, |m, (x, y)| m.max((x - y).abs()));
    }
    assert!(worst < 1e-4, "{what}: weights differ by {worst}");
    for (a, b) in m0.iter().zip(m1) {
        assert!(
            (a.loss - b.loss).abs() < 1e-4 && (a.kl - b.kl).abs() < 1e-5 && (a.entropy - b.entropy).abs() < 1e-4,
            "{what}: step {} metrics differ: loss {} / {}, kl {} / {}, entropy {} / {}",
            a.step,
            a.loss,
            b.loss,
            a.kl,
            b.kl,
            a.entropy,
            b.entropy
        );
        assert_eq!(a.reward.mean, b.reward.mean, "{what}: the rollouts differ");
    }
}

/// A run's weights (by name) and metrics.
type Run<'a> = (&'a [(String, Vec<f32>)], &'a [sigmaforge_trainer::metrics::StepMetrics]);

#[test]
fn full_finetuning_with_kl_is_unchanged_by_memory_options() {
    // Two passes per batch: the later pass reads the recorded old log-probs.
    let mut memories = BOUNDED.to_vec();
    // The reference in host memory, streamed layer by layer, alone and with the other savers.
    memories.extend(["{ reference_on_host: true }", "{ activation_checkpointing: true, logits_chunk: 4, reference_on_host: true }"]);
    assert_same("steps: 3, passes_per_batch: 2", "grpo: { beta: 0.05 }", "mem-full", &memories);
}

#[test]
fn lora_with_kl_is_unchanged_by_memory_options() {
    assert_same(
        "steps: 3",
        "finetune: lora\nlora: { rank: 4, alpha: 8, target_modules: [all-linear] }\ngrpo: { beta: 0.05, loss_aggregation: constant }",
        "mem-lora",
        &BOUNDED,
    );
}

#[test]
fn a_host_reference_needs_a_separate_reference_model() {
    for (setup, why) in [
        ("finetune: lora\nlora: { rank: 4, alpha: 8, target_modules: [q_proj] }\ngrpo: { beta: 0.05 }", "LoRA"),
        ("finetune: full\ngrpo: { beta: 0.0 }", "no KL"),
    ] {
        let yaml = format!(
            "model: {{ path: test }}\n{setup}\ntraining: {{ steps: 1, prompts_per_step: 1, rollouts_per_prompt: 2, memory: {{ reference_on_host: true }} }}\ngeneration: {{ max_new_tokens: 4 }}\noptimizer: {{ lr: 0.001 }}"
        );
        let err = sigmaforge_trainer::config::RunConfig::from_yaml(&yaml, "t.yaml").and_then(|c| c.validate().map(|_| c)).unwrap_err();
        assert!(format!("{err:#}").contains("reference_on_host applies to full fine-tuning with grpo.beta > 0"), "{why}: {err:#}");
    }
}

#[test]
fn chunked_logits_refuse_sequence_aggregation() {
    let yaml = "model: { path: test }\nfinetune: full\ntraining: { steps: 1, prompts_per_step: 1, rollouts_per_prompt: 2, memory: { logits_chunk: 8 } }\ngeneration: { max_new_tokens: 4 }\ngrpo: { loss_aggregation: sequence }\noptimizer: { lr: 0.001 }";
    let err = sigmaforge_trainer::config::RunConfig::from_yaml(yaml, "t.yaml").and_then(|c| c.validate().map(|_| c)).unwrap_err();
    assert!(format!("{err:#}").contains("logits_chunk needs grpo.loss_aggregation token or constant"), "{err:#}");
}

/// Packed micro-batches (`training.pack`, the default: each prompt once per row, its rollouts
/// after it, no padding) change the layout of the update, not what it computes: against padded
/// rows the run ends at the same weights with the same statistics — with the KL reference, two
/// passes per batch, a micro-batch that holds the end of one group and the start of the next
/// (4 rollouts in micro-batches of 3), with and without the memory savers, full and LoRA.
#[test]
fn packed_micro_batches_give_the_padded_update() {
    let lora = "finetune: lora\nlora: { rank: 4, alpha: 8, target_modules: [all-linear] }";
    for (memory, rest, name) in [
        ("{}", "", "pack-plain"),
        ("{ activation_checkpointing: true, logits_chunk: 4 }", "", "pack-bounded"),
        ("{ reference_on_host: true }", "", "pack-host-ref"),
        ("{ logits_chunk: 2 }", lora, "pack-lora"),
    ] {
        let (w0, m0) = run(&format!("training: {{ pack: false, memory: {memory} }}\n{rest}"), &format!("{name}-padded"));
        let (w1, m1) = run(&format!("training: {{ memory: {memory} }}\n{rest}"), &format!("{name}-packed"));
        assert!(m0.last().unwrap().kl > 1e-4, "{name}: KL {} is too small to compare", m0.last().unwrap().kl);
        assert_same_training(name, (&w0, &m0), (&w1, &m1));
    }
}
