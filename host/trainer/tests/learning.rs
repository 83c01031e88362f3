//! GRPO actually learns: a tiny random model on a toy verifiable reward raises its mean reward
//! clearly within a few dozen CPU steps.

mod common;

use common::*;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn learns(overrides: &str, name: &str) -> Vec<sigmaforge_trainer::metrics::StepMetrics> {
    let cfg = tiny_config(overrides);
    let dir = temp_run_dir(name);
    let mut t = tiny_trainer(&cfg, &dir);
    let start = std::time::Instant::now();
    t.run(false, None).unwrap();
    let metrics = sigmaforge_trainer::metrics::read_all(&dir).unwrap();
    let rewards: Vec<f64> = metrics.iter().map(|m| m.reward.mean).collect();
    let (first, last) = (mean(&rewards[..5]), mean(&rewards[rewards.len() - 5..]));
    eprintln!("{name}: reward {first:.3} -> {last:.3} in {:.1}s; curve {rewards:.2?}", start.elapsed().as_secs_f64());
    assert!(last > first + 0.3, "{name}: mean reward went from {first:.3} to {last:.3}");
    assert!(dir.join("metrics.png").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
    metrics
}

const FULL: &str = "training: { steps: 40, prompts_per_step: 4, rollouts_per_prompt: 8, micro_batch_size: 16, passes_per_batch: 1 }\n\
     optimizer: { lr: 0.02, schedule: constant, warmup_steps: 0 }\ngrpo: { beta: 0.0 }";

#[test]
fn full_finetuning_raises_the_reward() {
    let metrics = learns(FULL, "learn-full");
    // The rollouts come from the trained weights themselves: sampler and trainer agree.
    assert!(metrics.iter().all(|m| m.logprob_mismatch < 1e-4), "{:?}", metrics.iter().map(|m| m.logprob_mismatch).collect::<Vec<_>>());
}

/// Rollouts sampled from a Q8_0 copy of the weights (generation.rollout_weights: q8_0) still
/// teach the full-precision policy; the sampler/trainer gap is measured and small.
#[test]
fn full_finetuning_with_q8_0_rollouts_raises_the_reward() {
    let metrics = learns(&format!("{FULL}\ngeneration: {{ rollout_weights: q8_0 }}"), "learn-full-q8");
    let gaps: Vec<f64> = metrics.iter().map(|m| m.logprob_mismatch).collect();
    // Visible while the policy is uncertain (it fades as the policy becomes sure), never large.
    assert!(gaps[0] > 1e-3 && gaps.iter().all(|&g| g < 0.05), "log-prob mismatch per step: {gaps:?}");
}

#[test]
fn lora_raises_the_reward() {
    learns(
        "finetune: lora\nlora: { rank: 8, alpha: 16, target_modules: [all-linear] }\n\
         training: { steps: 40, prompts_per_step: 4, rollouts_per_prompt: 8, micro_batch_size: 16, passes_per_batch: 2 }\n\
         optimizer: { lr: 0.03, schedule: constant, warmup_steps: 0 }\ngrpo: { beta: 0.01 }",
        "learn-lora",
    );
}
