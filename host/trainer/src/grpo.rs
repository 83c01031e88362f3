//! GRPO: group-relative advantages and the clipped policy loss with an optional k3 KL penalty.
//!
//! Everything here works on plain tensors so it can be tested (and finite-difference checked)
//! without a model. Shapes: `N` completions (rows), `T` completion positions (columns); the
//! `mask` is 1.0 on tokens that the policy generated and 0.0 on padding and tool-result tokens,
//! so only the model's own tokens are pushed up or down.

use anyhow::{Result, bail, ensure};
use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

/// How per-token losses are reduced to one number (see docs/training.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossAggregation {
    /// Sum over every completion token of the batch / number of such tokens (DAPO). Long
    /// completions weigh more, which removes GRPO's length bias towards short wrong answers.
    Token,
    /// Mean over completions of each completion's per-token mean (the original GRPO).
    Sequence,
    /// Sum over tokens / (completions × max completion length), a constant (Dr. GRPO).
    Constant,
}

/// Hyper-parameters of the policy loss.
#[derive(Debug, Clone, Copy)]
pub struct LossParams {
    /// Lower clip: the ratio is not pushed below `1 - epsilon_low`.
    pub epsilon_low: f64,
    /// Upper clip (DAPO "clip-higher"): the ratio is not pushed above `1 + epsilon_high`.
    pub epsilon_high: f64,
    /// Weight of the k3 KL estimate to the reference policy; 0 disables it.
    pub beta: f64,
    pub aggregation: LossAggregation,
}

/// Group-normalised advantages: each reward minus its group's mean, divided by the group's
/// standard deviation (unbiased, as TRL does) when `scale_by_std` (Dr. GRPO leaves it out
/// because dividing by a small std over-weights near-unanimous groups).
///
/// `rewards` holds consecutive groups of `group_size`. A group with zero variance gets
/// advantage 0 for every member.
pub fn group_advantages(rewards: &[f64], group_size: usize, scale_by_std: bool) -> Result<Vec<f64>> {
    ensure!(group_size > 0, "group size must be at least 1");
    ensure!(rewards.len().is_multiple_of(group_size), "{} rewards do not split into groups of {group_size}", rewards.len());
    if let Some(bad) = rewards.iter().position(|r| !r.is_finite()) {
        bail!("reward {bad} is not finite ({}); rewards must be finite numbers", rewards[bad]);
    }
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(group_size) {
        let (mean, std) = mean_std(group);
        for &r in group {
            let centred = r - mean;
            out.push(if scale_by_std { centred / (std + 1e-4) } else { centred });
        }
    }
    Ok(out)
}

/// Mean and unbiased standard deviation (0 for a single value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// For each group: true when all its rewards are equal, so its advantages are all zero and it
/// teaches the policy nothing (only the KL term would act on it).
pub fn zero_variance_groups(rewards: &[f64], group_size: usize) -> Vec<bool> {
    rewards.chunks(group_size.max(1)).map(|g| g.iter().all(|r| (r - g[0]).abs() <= 1e-9)).collect()
}

/// The denominator of the loss for the *whole* batch. Micro-batches each contribute
/// `sum / denominator`, so accumulating their gradients gives exactly the full-batch gradient.
#[derive(Debug, Clone, Copy)]
pub struct LossNormalizer {
    pub aggregation: LossAggregation,
    /// Completion tokens with mask 1 in the whole batch (token aggregation).
    pub total_tokens: f64,
    /// Completions in the whole batch.
    pub total_sequences: f64,
    /// Longest completion in the whole batch (constant aggregation).
    pub max_completion_len: f64,
}

impl LossNormalizer {
    /// `lengths`: number of loss-masked tokens of every completion in the batch.
    pub fn for_batch(aggregation: LossAggregation, lengths: &[usize], max_completion_len: usize) -> Self {
        Self {
            aggregation,
            total_tokens: lengths.iter().sum::<usize>().max(1) as f64,
            total_sequences: lengths.len().max(1) as f64,
            max_completion_len: max_completion_len.max(1) as f64,
        }
    }
}

/// Inputs of the loss for one micro-batch (all `[N, T]` except `advantages`: `[N]`).
pub struct LossInputs<'a> {
    /// Log-probabilities of the sampled tokens under the current policy (carries gradients).
    pub logp: &'a Tensor,
    /// The same under the policy that sampled them (no gradient). Equal to `logp` on the first
    /// pass over a batch; differs on later passes (`passes_per_batch > 1`).
    pub old_logp: &'a Tensor,
    /// Under the reference policy; required when `beta > 0`.
    pub ref_logp: Option<&'a Tensor>,
    /// 1.0 where the token counts, 0.0 elsewhere.
    pub mask: &'a Tensor,
    pub advantages: &'a Tensor,
}

/// Sums over the micro-batch's masked tokens, for metrics (divide by the token count).
#[derive(Debug, Clone, Copy, Default)]
pub struct LossStats {
    pub tokens: f64,
    pub kl_sum: f64,
    /// Tokens whose objective was clipped (ratio outside the trust region on the side that
    /// the advantage pushes towards).
    pub clipped_low: f64,
    pub clipped_high: f64,
    pub ratio_sum: f64,
}

impl LossStats {
    pub fn add(&mut self, other: &LossStats) {
        self.tokens += other.tokens;
        self.kl_sum += other.kl_sum;
        self.clipped_low += other.clipped_low;
        self.clipped_high += other.clipped_high;
        self.ratio_sum += other.ratio_sum;
    }
}

/// The GRPO loss of one micro-batch: `-min(r·A, clip(r, 1-ε_low, 1+ε_high)·A) + β·k3`, masked
/// and divided by the batch-wide normaliser. Returns the scalar loss (with gradients back to
/// `inputs.logp`) and statistics.
pub fn policy_loss(inputs: &LossInputs, params: &LossParams, norm: &LossNormalizer) -> Result<(Tensor, LossStats)> {
    let LossInputs { logp, old_logp, ref_logp, mask, advantages } = *inputs;
    ensure!(logp.rank() == 2, "log-probs must be [completions, positions], got {:?}", logp.dims());
    ensure!(
        logp.dims() == old_logp.dims() && logp.dims() == mask.dims(),
        "log-prob / old log-prob / mask shapes differ: {:?} {:?} {:?}",
        logp.dims(),
        old_logp.dims(),
        mask.dims()
    );
    let (n, _t) = logp.dims2()?;
    ensure!(advantages.dims() == [n], "advantages must be [{n}], got {:?}", advantages.dims());
    let dtype = logp.dtype();
    let mask = mask.to_dtype(dtype)?;
    let adv = advantages.to_dtype(dtype)?.unsqueeze(1)?.broadcast_as(logp.shape())?;

    let ratio = (logp - old_logp.detach())?.exp()?;
    let clipped_ratio = ratio.clamp(1.0 - params.epsilon_low, 1.0 + params.epsilon_high)?;
    let unclipped_obj = (&ratio * &adv)?;
    let clipped_obj = (&clipped_ratio * &adv)?;
    let mut per_token = unclipped_obj.minimum(&clipped_obj)?.neg()?;

    let mut kl_sum = 0.0;
    if params.beta != 0.0 {
        let Some(ref_logp) = ref_logp else {
            bail!("beta = {} needs reference log-probs, none were computed", params.beta);
        };
        ensure!(ref_logp.dims() == logp.dims(), "reference log-prob shape {:?} != {:?}", ref_logp.dims(), logp.dims());
        // k3 (Schulman): exp(ref - logp) - (ref - logp) - 1, unbiased for KL(π‖ref), always ≥ 0.
        let diff = (ref_logp.detach() - logp)?;
        let kl = ((diff.exp()? - &diff)? - 1.0)?;
        kl_sum = scalar(&(&kl * &mask)?.sum_all()?)?;
        per_token = (per_token + (kl * params.beta)?)?;
    }

    let masked = (&per_token * &mask)?;
    let loss = match norm.aggregation {
        LossAggregation::Token => (masked.sum_all()? / norm.total_tokens)?,
        LossAggregation::Constant => (masked.sum_all()? / (norm.total_sequences * norm.max_completion_len))?,
        LossAggregation::Sequence => {
            let lengths = mask.sum(D::Minus1)?.clamp(1.0, f64::INFINITY)?;
            (masked.sum(D::Minus1)?.div(&lengths)?.sum_all()? / norm.total_sequences)?
        }
    };

    // Statistics, without gradients.
    let ratio_d = ratio.detach();
    let adv_d = adv.detach();
    let low = ratio_d.lt(1.0 - params.epsilon_low)?.to_dtype(dtype)?.mul(&adv_d.lt(0.0)?.to_dtype(dtype)?)?;
    let high = ratio_d.gt(1.0 + params.epsilon_high)?.to_dtype(dtype)?.mul(&adv_d.gt(0.0)?.to_dtype(dtype)?)?;
    let stats = LossStats {
        tokens: scalar(&mask.sum_all()?)?,
        kl_sum,
        clipped_low: scalar(&(low * &mask)?.sum_all()?)?,
        clipped_high: scalar(&(high * &mask)?.sum_all()?)?,
        ratio_sum: scalar(&(ratio_d * &mask)?.sum_all()?)?,
    };
    Ok((loss, stats))
}

/// Log-probabilities of `targets` under `logits` (`[N, T, V]`, `[N, T]` → `[N, T]`), divided by
/// the sampling temperature first so they describe the distribution the tokens were drawn
/// from. Fused on the CPU (`sigmaforge_model::model::token_logprobs_and_entropy`), candle's
/// differentiable `log_softmax` elsewhere. Also returns the per-token entropy `[N, T]` (no
/// gradient) for metrics.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor, temperature: f64) -> Result<(Tensor, Tensor)> {
    sigmaforge_model::model::token_logprobs_and_entropy(logits, targets, temperature)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn advantages_are_centred_per_group_and_scaled_by_unbiased_std() {
        let a = group_advantages(&[1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], 4, true).unwrap();
        let std = (1.0f64 / 3.0).sqrt(); // unbiased std of [1,0,0,1]
        assert!((a[0] - 0.5 / (std + 1e-4)).abs() < 1e-9);
        assert!((a[1] + 0.5 / (std + 1e-4)).abs() < 1e-9);
        assert_eq!(&a[4..], &[0.0; 4]);
        let unscaled = group_advantages(&[1.0, 0.0, 0.0, 1.0], 4, false).unwrap();
        assert_eq!(unscaled, vec![0.5, -0.5, -0.5, 0.5]);
    }

    #[test]
    fn bad_rewards_are_errors_not_nan_advantages() {
        let err = group_advantages(&[1.0, f64::NAN], 2, true).unwrap_err().to_string();
        assert!(err.contains("reward 1 is not finite"), "{err}");
        assert!(group_advantages(&[1.0, 2.0, 3.0], 2, true).is_err());
    }

    #[test]
    fn zero_variance_groups_are_found() {
        assert_eq!(zero_variance_groups(&[1.0, 1.0, 0.0, 1.0, 0.3, 0.3], 2), vec![true, false, true]);
    }

    fn t2(v: &[f64], n: usize, t: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (n, t), &Device::Cpu).unwrap()
    }

    /// Reference implementation with plain loops, for comparison with the tensor version.
    fn loop_loss(logp: &[f64], old: &[f64], refp: &[f64], mask: &[f64], adv: &[f64], t: usize, p: &LossParams) -> f64 {
        let n = adv.len();
        let mut total = 0.0;
        let mut tokens = 0.0;
        let mut seq_means = 0.0;
        for (i, &a) in adv.iter().enumerate() {
            let (mut s, mut c) = (0.0, 0.0);
            for j in 0..t {
                let k = i * t + j;
                let r = (logp[k] - old[k]).exp();
                let rc = r.clamp(1.0 - p.epsilon_low, 1.0 + p.epsilon_high);
                let d = refp[k] - logp[k];
                let kl = d.exp() - d - 1.0;
                let l = -(r * a).min(rc * a) + p.beta * kl;
                s += l * mask[k];
                c += mask[k];
            }
            total += s;
            tokens += c;
            seq_means += s / c.max(1.0);
        }
        match p.aggregation {
            LossAggregation::Token => total / tokens,
            LossAggregation::Sequence => seq_means / n as f64,
            LossAggregation::Constant => total / (n as f64 * t as f64),
        }
    }

    #[test]
    fn loss_matches_a_loop_implementation_for_every_aggregation() {
        let (n, t) = (3, 4);
        let logp = [-1.0, -2.0, -0.5, -3.0, -0.2, -0.7, -1.5, -0.1, -2.2, -0.9, -0.4, -1.1];
        let old = [-1.3, -1.7, -0.5, -2.0, -0.6, -0.7, -1.0, -0.1, -2.0, -1.9, -0.4, -1.0];
        let refp = [-1.1, -2.5, -0.4, -3.0, -0.3, -0.5, -1.5, -0.2, -2.0, -1.0, -0.6, -1.1];
        let mask = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let adv = [0.8, -1.2, 0.4];
        for aggregation in [LossAggregation::Token, LossAggregation::Sequence, LossAggregation::Constant] {
            let p = LossParams { epsilon_low: 0.2, epsilon_high: 0.28, beta: 0.04, aggregation };
            let lengths: Vec<usize> = mask.chunks(t).map(|m| m.iter().sum::<f64>() as usize).collect();
            let norm = LossNormalizer::for_batch(aggregation, &lengths, t);
            let refs = t2(&refp, n, t);
            let (loss, stats) = policy_loss(
                &LossInputs {
                    logp: &t2(&logp, n, t),
                    old_logp: &t2(&old, n, t),
                    ref_logp: Some(&refs),
                    mask: &t2(&mask, n, t),
                    advantages: &Tensor::new(&adv, &Device::Cpu).unwrap(),
                },
                &p,
                &norm,
            )
            .unwrap();
            let want = loop_loss(&logp, &old, &refp, &mask, &adv, t, &p);
            let got = loss.to_scalar::<f64>().unwrap();
            assert!((got - want).abs() < 1e-12, "{aggregation:?}: {got} vs {want}");
            assert_eq!(stats.tokens, 9.0);
            // High clips (ratio > 1.28 with A > 0): row 0 token 0 (e^0.3) and row 2 token 1 (e^1).
            // Row 1 token 0 (e^0.4) has A < 0, so the clip is not active there; the only ratio
            // below 0.8 with A < 0 (row 1 token 2) is masked out.
            assert_eq!(stats.clipped_high, 2.0);
            assert_eq!(stats.clipped_low, 0.0);
        }
    }

    #[test]
    fn micro_batches_add_up_to_the_full_batch_loss() {
        let (n, t) = (4, 3);
        let logp: Vec<f64> = (0..n * t).map(|i| -0.1 * (i as f64 + 1.0)).collect();
        let old: Vec<f64> = logp.iter().map(|v| v + 0.05).collect();
        let mask = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let adv = [1.0, -1.0, 0.5, -0.5];
        for aggregation in [LossAggregation::Token, LossAggregation::Sequence, LossAggregation::Constant] {
            let p = LossParams { epsilon_low: 0.2, epsilon_high: 0.2, beta: 0.0, aggregation };
            let lengths: Vec<usize> = mask.chunks(t).map(|m| m.iter().sum::<f64>() as usize).collect();
            let norm = LossNormalizer::for_batch(aggregation, &lengths, t);
            let run = |rows: std::ops::Range<usize>| {
                let k = rows.start * t..rows.end * t;
                let m = rows.len();
                let (l, _) = policy_loss(
                    &LossInputs {
                        logp: &t2(&logp[k.clone()], m, t),
                        old_logp: &t2(&old[k.clone()], m, t),
                        ref_logp: None,
                        mask: &t2(&mask[k], m, t),
                        advantages: &Tensor::new(&adv[rows], &Device::Cpu).unwrap(),
                    },
                    &p,
                    &norm,
                )
                .unwrap();
                l.to_scalar::<f64>().unwrap()
            };
            let full = run(0..4);
            let split = run(0..1) + run(1..3) + run(3..4);
            assert!((full - split).abs() < 1e-12, "{aggregation:?}: {full} vs {split}");
        }
    }

    #[test]
    fn beta_without_reference_is_an_error() {
        let x = t2(&[-1.0, -1.0], 1, 2);
        let p = LossParams { epsilon_low: 0.2, epsilon_high: 0.2, beta: 0.1, aggregation: LossAggregation::Token };
        let norm = LossNormalizer::for_batch(LossAggregation::Token, &[2], 2);
        let adv = Tensor::new(&[1.0f64], &Device::Cpu).unwrap();
        let inputs = LossInputs { logp: &x, old_logp: &x, ref_logp: None, mask: &x.ones_like().unwrap(), advantages: &adv };
        let err = policy_loss(&inputs, &p, &norm).unwrap_err().to_string();
        assert!(err.contains("reference"), "{err}");
    }

    /// Analytic gradient of loss(logits) through log_softmax + gather + clipped objective + k3
    /// against central finite differences, in f64.
    #[test]
    fn gradient_of_logits_to_loss_matches_finite_differences() {
        let dev = Device::Cpu;
        let (n, t, v) = (2, 3, 5);
        let init: Vec<f64> = (0..n * t * v).map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.3).collect();
        let logits = Var::from_vec(init.clone(), (n, t, v), &dev).unwrap();
        let targets = Tensor::new(&[[1u32, 4, 0], [2, 2, 3]], &dev).unwrap();
        let mask = t2(&[1.0, 1.0, 0.0, 1.0, 1.0, 1.0], n, t);
        let adv = Tensor::new(&[0.7f64, -1.3], &dev).unwrap();
        // Old and reference log-probs slightly away from the current ones so that the ratio
        // and the KL term both contribute, but away from the clip boundary (non-differentiable).
        let old = t2(&[-1.6, -2.0, -1.0, -2.4, -1.5, -1.9], n, t);
        let refp = t2(&[-1.5, -2.1, -1.0, -2.2, -1.8, -2.0], n, t);
        let p = LossParams { epsilon_low: 0.5, epsilon_high: 0.6, beta: 0.3, aggregation: LossAggregation::Sequence };
        let norm = LossNormalizer::for_batch(p.aggregation, &[2, 3], t);
        let f = |lg: &Tensor| -> Tensor {
            let (logp, _) = token_logprobs(lg, &targets, 0.9).unwrap();
            let inputs = LossInputs { logp: &logp, old_logp: &old, ref_logp: Some(&refp), mask: &mask, advantages: &adv };
            policy_loss(&inputs, &p, &norm).unwrap().0
        };
        let loss = f(logits.as_tensor());
        let grads = loss.backward().unwrap();
        let g: Vec<f64> = grads.get(&logits).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        let mut max_err = 0.0f64;
        for i in 0..init.len() {
            let mut plus = init.clone();
            plus[i] += h;
            let mut minus = init.clone();
            minus[i] -= h;
            let fp = f(&Tensor::from_vec(plus, (n, t, v), &dev).unwrap()).to_scalar::<f64>().unwrap();
            let fm = f(&Tensor::from_vec(minus, (n, t, v), &dev).unwrap()).to_scalar::<f64>().unwrap();
            let fd = (fp - fm) / (2.0 * h);
            max_err = max_err.max((fd - g[i]).abs() / (fd.abs().max(g[i].abs()).max(1e-3)));
        }
        assert!(max_err < 1e-6, "max relative error {max_err}");
    }
}
