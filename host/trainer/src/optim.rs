//! AdamW with state that can be saved and restored, gradient accumulation and clipping by
//! global norm, and the learning-rate schedules.
//!
//! Written here instead of using `candle_nn::AdamW` because candle keeps that optimizer's
//! moments and step counter private (no checkpoint/resume) and has no gradient clipping.
//! Moments are kept in f32 even for bf16/f16 parameters, so the update does not lose the small
//! second-moment values to half-precision rounding, and half-precision parameters get f32
//! master weights: the update is applied to the f32 copy and the model sees it rounded. Without
//! them a bf16 weight near 1.0 (spacing 2^-7) ignores every update smaller than ~0.004, i.e. all
//! of them at fine-tuning learning rates.

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (decoupled weight decay, Loshchilov & Hutter).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Gradients summed over micro-batches, one slot per trainable parameter (same order as the
/// optimizer's parameters).
pub struct GradAccumulator {
    pub grads: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(n_params: usize) -> Self {
        Self { grads: vec![None; n_params] }
    }

    /// Adds the gradients that `backward()` produced for `params`.
    pub fn add(&mut self, store: &GradStore, params: &[(String, Var)]) -> Result<()> {
        for ((_, var), slot) in params.iter().zip(self.grads.iter_mut()) {
            if let Some(g) = store.get(var.as_tensor()) {
                let g = g.to_dtype(DType::F32)?;
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// Names of parameters that received no gradient at all: a silent graph cut in the model
    /// (e.g. a fused candle op without backward) shows up here instead of as a model that
    /// quietly does not learn.
    pub fn missing(&self, params: &[(String, Var)]) -> Vec<String> {
        params.iter().zip(&self.grads).filter(|(_, g)| g.is_none()).map(|((n, _), _)| n.clone()).collect()
    }

    /// The L2 norm of all gradients together.
    pub fn global_norm(&self) -> Result<f64> {
        let mut sq = 0.0f64;
        for g in self.grads.iter().flatten() {
            sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        Ok(sq.sqrt())
    }

    /// Scales all gradients so that their global norm is at most `max_norm` (no-op when
    /// `max_norm` is 0 or infinite). Returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        self.clip_to(norm, max_norm)?;
        Ok(norm)
    }

    /// Scales these gradients as clipping a gradient of global norm `norm` to `max_norm` does
    /// (for gradients sharded across ranks, `norm` is the norm of all shards together).
    pub fn clip_to(&mut self, norm: f64, max_norm: f64) -> Result<()> {
        ensure!(norm.is_finite(), "gradient norm is {norm}; the loss produced non-finite gradients");
        if max_norm > 0.0 && max_norm.is_finite() && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for g in self.grads.iter_mut().flatten() {
                *g = (&*g * scale)?;
            }
        }
        Ok(())
    }
}

/// AdamW over a fixed, named list of parameters.
///
/// Sharded optimizer state (ZeRO-1, [`AdamW::sharded`]): the optimizer still knows every
/// parameter, but keeps moments for, and updates, only the ones this rank owns; the caller
/// shares the owners' new values afterwards.
pub struct AdamW {
    params: Vec<(String, Var)>,
    /// `None` for parameters another rank owns.
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    /// f32 master copies of the owned parameters that are not f32 (None otherwise).
    master: Vec<Option<Tensor>>,
    step: u64,
    hp: AdamWParams,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, hp: AdamWParams) -> Result<Self> {
        let owned = vec![true; params.len()];
        Self::sharded(params, hp, &owned)
    }

    /// AdamW that keeps state for, and updates, only the parameters with `owned[i]`.
    pub fn sharded(params: Vec<(String, Var)>, hp: AdamWParams, owned: &[bool]) -> Result<Self> {
        ensure!(owned.len() == params.len(), "{} ownership flags for {} parameters", owned.len(), params.len());
        let mut names = std::collections::HashSet::new();
        for (n, _) in &params {
            ensure!(names.insert(n.as_str()), "parameter name {n} appears twice");
        }
        let zeros = |(i, (_, v)): (usize, &(String, Var))| -> candle_core::Result<Option<Tensor>> {
            if owned[i] { Ok(Some(v.as_tensor().zeros_like()?.to_dtype(DType::F32)?)) } else { Ok(None) }
        };
        let m = params.iter().enumerate().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        let v = params.iter().enumerate().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        let master =
            params.iter().enumerate().map(|(i, (_, v))| if owned[i] { master_copy(v) } else { Ok(None) }).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { params, m, v, master, step: 0, hp })
    }

    /// Whether this optimizer updates parameter `i` (false for other ranks' shards).
    pub fn owns(&self, i: usize) -> bool {
        self.m[i].is_some()
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Optimizer steps taken so far (bias correction uses it).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr`. A parameter without gradient is left untouched.
    pub fn step(&mut self, grads: &GradAccumulator, lr: f64) -> Result<()> {
        ensure!(grads.grads.len() == self.params.len(), "gradient slots do not match the parameters");
        self.step += 1;
        let AdamWParams { beta1, beta2, eps, weight_decay } = self.hp;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = &grads.grads[i] else { continue };
            let (Some(m_prev), Some(v_prev)) = (&self.m[i], &self.v[i]) else { continue };
            let m = ((m_prev * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((v_prev * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let theta = match &self.master[i] {
                Some(w) => w.clone(),
                None => var.as_tensor().to_dtype(DType::F32)?,
            };
            let decayed = if weight_decay != 0.0 { (&theta * (1.0 - lr * weight_decay))? } else { theta };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + eps)?)?;
            let new = (decayed - (update * lr)?)?;
            var.set(&new.to_dtype(var.dtype())?)?;
            if let Some(w) = &mut self.master[i] {
                *w = new;
            }
            self.m[i] = Some(m);
            self.v[i] = Some(v);
        }
        Ok(())
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`, and `w.<param>` for the f32
    /// master weights of half-precision parameters) and the step counter, for a checkpoint (a
    /// sharded optimizer: of its own parameters only).
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut map = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            if let (Some(m), Some(v)) = (&self.m[i], &self.v[i]) {
                map.insert(format!("m.{name}"), m.clone());
                map.insert(format!("v.{name}"), v.clone());
            }
            if let Some(w) = &self.master[i] {
                map.insert(format!("w.{name}"), w.clone());
            }
        }
        (map, self.step)
    }

    /// Restores moments saved by [`AdamW::state`]; every parameter must be present with its
    /// shape (a sharded optimizer takes its own parameters' moments and skips the others).
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (i, (name, var)) in self.params.iter().enumerate() {
            let owned = self.m[i].is_some();
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{kind}.{name}");
                let t = tensors.remove(&key).with_context(|| format!("optimizer state has no {key}"))?;
                ensure!(t.dims() == var.dims(), "optimizer state {key} has shape {:?}, parameter has {:?}", t.dims(), var.dims());
                if owned {
                    *slot = Some(t.to_dtype(DType::F32)?.to_device(var.device())?);
                }
            }
            // Master weights: from the checkpoint when it has them, else from the (rounded)
            // parameter, which is what a checkpoint written before they existed can offer.
            let key = format!("w.{name}");
            let saved = tensors.remove(&key);
            if self.master[i].is_some() {
                self.master[i] = match saved {
                    Some(t) => {
                        ensure!(t.dims() == var.dims(), "optimizer state {key} has shape {:?}, parameter has {:?}", t.dims(), var.dims());
                        Some(t.to_dtype(DType::F32)?.to_device(var.device())?)
                    }
                    None => master_copy(var)?,
                };
            }
        }
        if let Some(extra) = tensors.keys().next() {
            bail!("optimizer state has {extra}, which is not a trainable parameter of this model (different LoRA/full setting?)");
        }
        self.step = step;
        Ok(())
    }
}

/// An f32 copy of a half-precision (bf16/f16) parameter; `None` for the others, which hold
/// at least f32 precision themselves.
fn master_copy(var: &Var) -> candle_core::Result<Option<Tensor>> {
    match var.dtype() {
        DType::BF16 | DType::F16 => Ok(Some(var.as_tensor().to_dtype(DType::F32)?.detach())),
        _ => Ok(None),
    }
}

/// The learning-rate curve over GRPO steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Cosine,
}

#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// Cosine decays to `peak_lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// Learning rate for 0-based `step`: linear warm-up over `warmup_steps` (step 0 already gets
    /// a non-zero rate), then constant or a half cosine down to the minimum at the last step.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Constant => self.peak_lr,
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).saturating_sub(1).max(1);
                let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                let min = self.peak_lr * self.min_lr_ratio;
                min + (self.peak_lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// bf16 has 8 bits of mantissa: at 1.0 the next value down is 1 - 2^-8. An Adam step of
    /// lr = 1e-4 moves the weight by ~1e-4, so without master weights it would never move.
    #[test]
    fn half_precision_parameters_accumulate_small_updates_in_master_weights() {
        let var = Var::new(&[1.0f32, 1.0], &Device::Cpu).unwrap();
        let var = Var::from_tensor(&var.as_tensor().to_dtype(DType::BF16).unwrap()).unwrap();
        let hp = AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], hp).unwrap();
        let mut acc = GradAccumulator::new(1);
        acc.grads[0] = Some(Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap());
        for _ in 0..100 {
            opt.step(&acc, 1e-4).unwrap();
        }
        let got: Vec<f32> = var.as_tensor().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        assert!(got[0] < 0.996 && got[0] > 0.98, "{got:?}: the small updates were lost to bf16 rounding");
        assert!(got[1] > 1.004 && got[1] < 1.02, "{got:?}");
        // The master weights travel with the optimizer state, so a resumed run continues exactly.
        let (state, steps) = opt.state();
        let master: Vec<f32> = state["w.w"].to_vec1().unwrap();
        assert!((master[0] - 0.99).abs() < 1e-3, "{master:?}");
        let var2 = Var::from_tensor(var.as_tensor()).unwrap();
        let mut opt2 = AdamW::new(vec![("w".into(), var2.clone())], hp).unwrap();
        opt2.load_state(state, steps).unwrap();
        opt.step(&acc, 1e-4).unwrap();
        opt2.step(&acc, 1e-4).unwrap();
        assert_eq!(opt.state().0["w.w"].to_vec1::<f32>().unwrap(), opt2.state().0["w.w"].to_vec1::<f32>().unwrap());
    }

    #[test]
    fn adamw_matches_a_hand_computed_step_with_decay() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let hp = AdamWParams { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], hp).unwrap();
        let mut acc = GradAccumulator::new(1);
        acc.grads[0] = Some(Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap());
        let lr = 0.01;
        opt.step(&acc, lr).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = g/|g| = sign(g).
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        let want = [1.0 * (1.0 - lr * 0.1) - lr, -2.0 * (1.0 - lr * 0.1) + lr];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // Step 2 with a different gradient: compare with the formula.
        acc.grads[0] = Some(Tensor::new(&[0.1f32, 0.3], &Device::Cpu).unwrap());
        opt.step(&acc, lr).unwrap();
        let got2: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        for k in 0..2 {
            let (g1, g2) = ([0.5, -0.25][k], [0.1, 0.3][k]);
            let m = 0.9 * 0.1 * g1 + 0.1 * g2;
            let v = 0.99 * 0.01 * g1 * g1 + 0.01 * g2 * g2;
            let upd = (m / (1.0 - 0.81)) / ((v / (1.0 - 0.9801f64)).sqrt() + 1e-8);
            let want = got[k] as f64 * (1.0 - lr * 0.1) - lr * upd;
            assert!((got2[k] as f64 - want).abs() < 1e-6, "k={k}: {} vs {want}", got2[k]);
        }
    }

    #[test]
    fn saved_state_continues_identically() {
        let dev = Device::Cpu;
        let grads = [[0.3f32, -0.1, 0.7], [0.2, 0.2, -0.5], [-0.4, 0.9, 0.1], [0.05, -0.3, 0.2]];
        let run = |split: Option<usize>| -> Vec<f32> {
            let var = Var::new(&[0.5f32, 0.1, -0.3], &dev).unwrap();
            let mut opt = AdamW::new(vec![("p".into(), var.clone())], AdamWParams::default()).unwrap();
            for (i, g) in grads.iter().enumerate() {
                if split == Some(i) {
                    let (state, step) = opt.state();
                    let weights = var.as_tensor().copy().unwrap();
                    let fresh = Var::from_tensor(&weights).unwrap();
                    opt = AdamW::new(vec![("p".into(), fresh.clone())], AdamWParams::default()).unwrap();
                    opt.load_state(state, step).unwrap();
                    return {
                        let mut acc = GradAccumulator::new(1);
                        for g in &grads[i..] {
                            acc.grads[0] = Some(Tensor::new(g, &dev).unwrap());
                            opt.step(&acc, 0.01).unwrap();
                        }
                        fresh.as_tensor().to_vec1().unwrap()
                    };
                }
                let mut acc = GradAccumulator::new(1);
                acc.grads[0] = Some(Tensor::new(g, &dev).unwrap());
                opt.step(&acc, 0.01).unwrap();
            }
            var.as_tensor().to_vec1().unwrap()
        };
        assert_eq!(run(None), run(Some(2)));
    }

    #[test]
    fn a_sharded_optimizer_updates_and_saves_only_its_own_parameters() {
        let dev = Device::Cpu;
        let params = || vec![("a".to_string(), Var::new(&[1.0f32], &dev).unwrap()), ("b".to_string(), Var::new(&[2.0f32], &dev).unwrap())];
        let (full_p, shard_p) = (params(), params());
        let mut full = AdamW::new(full_p.clone(), AdamWParams::default()).unwrap();
        let mut shard = AdamW::sharded(shard_p.clone(), AdamWParams::default(), &[false, true]).unwrap();
        let mut acc = GradAccumulator::new(2);
        acc.grads = vec![Some(Tensor::new(&[0.5f32], &dev).unwrap()), Some(Tensor::new(&[-0.5f32], &dev).unwrap())];
        full.step(&acc, 0.1).unwrap();
        shard.step(&acc, 0.1).unwrap();
        let value = |p: &[(String, Var)], i: usize| p[i].1.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert_eq!(value(&shard_p, 0), 1.0, "another rank's parameter is left alone");
        assert_eq!(value(&shard_p, 1), value(&full_p, 1), "its own parameter moves exactly as unsharded");
        let (state, step) = shard.state();
        let mut keys: Vec<_> = state.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, vec!["m.b", "v.b"]);
        // Restoring from a full state takes the owned moments only.
        let (full_state, _) = full.state();
        let mut restored = AdamW::sharded(params(), AdamWParams::default(), &[false, true]).unwrap();
        restored.load_state(full_state, step).unwrap();
        assert_eq!(restored.state().0["m.b"].to_vec1::<f32>().unwrap(), full.state().0["m.b"].to_vec1::<f32>().unwrap());
        assert!(!restored.owns(0) && restored.owns(1));
    }

    #[test]
    fn load_state_rejects_a_different_parameter_set() {
        let var = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("a".into(), var)], AdamWParams::default()).unwrap();
        let err = opt.load_state(HashMap::new(), 3).unwrap_err().to_string();
        assert!(err.contains("no m.a"), "{err}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut acc = GradAccumulator::new(2);
        acc.grads[0] = Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap());
        acc.grads[1] = Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap());
        let before = acc.clip_global_norm(1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-9);
        assert!((acc.global_norm().unwrap() - 1.0).abs() < 1e-5);
        let mut small = GradAccumulator::new(1);
        small.grads[0] = Some(Tensor::new(&[0.3f32], &Device::Cpu).unwrap());
        small.clip_global_norm(1.0).unwrap();
        assert!((small.global_norm().unwrap() - 0.3).abs() < 1e-7);
    }

    #[test]
    fn schedules() {
        let s = LrSchedule { kind: ScheduleKind::Cosine, peak_lr: 1.0, warmup_steps: 2, total_steps: 12, min_lr_ratio: 0.1 };
        assert!((s.lr(0) - 0.5).abs() < 1e-12);
        assert!((s.lr(1) - 1.0).abs() < 1e-12);
        assert!((s.lr(2) - 1.0).abs() < 1e-12);
        assert!((s.lr(11) - 0.1).abs() < 1e-12);
        assert!(s.lr(6) < 1.0 && s.lr(6) > 0.1);
        let c = LrSchedule { kind: ScheduleKind::Constant, ..s };
        assert_eq!(c.lr(11), 1.0);
    }
}
