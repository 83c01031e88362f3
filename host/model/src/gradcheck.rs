//! Gradient checks shared by the model and GRPO-loss tests.
//!
//! candle drops ops without a backward pass from the graph silently (`backward()` still returns
//! Ok), so tests must check both that every trainable parameter receives a gradient and that the
//! gradient is the right one (central finite differences, in f64).

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor, Var, backprop::GradStore};

use crate::rng::SamplerRng;

#[derive(Clone, Debug)]
pub struct GradCheckReport {
    /// Coordinates compared.
    pub checked: usize,
    /// Largest |analytic − numeric| / max(|analytic|, |numeric|, 1e-7).
    pub max_rel_err: f64,
    /// Where the largest error was, e.g. "model.norm.weight[3]: analytic … numeric …".
    pub worst: String,
}

/// Names of `vars` that have no gradient, or only an all-zero one, in `grads`.
pub fn missing_gradients(vars: &[(String, Var)], grads: &GradStore) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for (name, var) in vars {
        let ok = match grads.get(var.as_tensor()) {
            None => false,
            Some(g) => g.abs()?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? > 0.0,
        };
        if !ok {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Compares the analytic gradient of the scalar `loss()` with central finite differences at
/// `per_var` random coordinates of each var. The vars should be f64; `loss` must be
/// deterministic. Fails if a var gets no gradient at all.
pub fn check_gradients(vars: &[(String, Var)], loss: impl Fn() -> Result<Tensor>, per_var: usize, eps: f64, seed: u64) -> Result<GradCheckReport> {
    let l = loss()?;
    let grads = l.backward()?;
    let mut rng = SamplerRng::new(seed);
    let mut report = GradCheckReport { checked: 0, max_rel_err: 0.0, worst: String::new() };
    for (name, var) in vars {
        let grad = grads
            .get(var.as_tensor())
            .with_context(|| format!("{name} received no gradient"))?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let original = var.as_tensor().copy()?; // own storage: Var::set refuses its own buffer
        let values = original.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if values.is_empty() {
            bail!("{name} is empty");
        }
        for _ in 0..per_var {
            let i = rng.below(values.len());
            let eval_at = |delta: f64| -> Result<f64> {
                let mut v = values.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, original.shape(), original.device())?.to_dtype(original.dtype())?;
                var.set(&t)?;
                scalar(&loss()?)
            };
            let numeric = (eval_at(eps)? - eval_at(-eps)?) / (2.0 * eps);
            var.set(&original)?;
            let analytic = grad[i];
            let rel = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-7);
            report.checked += 1;
            if rel >= report.max_rel_err {
                report.max_rel_err = rel;
                report.worst = format!("{name}[{i}]: analytic {analytic:.6e} numeric {numeric:.6e}");
            }
        }
    }
    Ok(report)
}
