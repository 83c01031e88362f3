//! Per-step metrics: one JSON object per line in `<run>/metrics.jsonl`, and a PNG of the
//! curves (`<run>/metrics.png`) at the end of a run.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Mean and (population) standard deviation of one reward quantity over a step's rollouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        Self { mean, std: var.sqrt() }
    }
}

/// Everything logged for one GRPO step. Field names are the JSONL keys (see docs/training.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based number of the step just completed.
    pub step: u64,
    pub lr: f64,
    pub reward: MeanStd,
    /// Per reward component (value in [0, 1], before weighting).
    pub reward_components: BTreeMap<String, MeanStd>,
    /// Completions whose reward failed (scored 0).
    pub reward_errors: usize,
    pub loss: f64,
    /// Mean k3 KL to the reference per token (0 when beta = 0: not computed).
    pub kl: f64,
    /// Mean per-token entropy of the policy over completion tokens.
    pub entropy: f64,
    /// Fraction of completion tokens whose objective was clipped (both sides).
    pub clip_fraction: f64,
    pub clip_fraction_low: f64,
    pub clip_fraction_high: f64,
    /// Global gradient norm before clipping (mean over the step's passes).
    pub grad_norm: f64,
    pub completion_length: MeanStd,
    /// Completions that hit max_new_tokens without a stop token.
    pub truncated: usize,
    pub groups: usize,
    /// Completions scored this step (prompts × rollouts, over every rank of a data-parallel run).
    #[serde(default)]
    pub rollouts: usize,
    pub zero_variance_groups: usize,
    /// Mean |log-prob at sampling − log-prob in the training forward| per token; should be ~0.
    pub logprob_mismatch: f64,
    /// Seconds spent generating, scoring (on the scoring thread), waiting for scores after the
    /// last generation, and updating the weights; and for the whole step.
    pub time_generation_s: f64,
    pub time_reward_s: f64,
    pub time_reward_wait_s: f64,
    pub time_update_s: f64,
    pub time_step_s: f64,
    /// Generated tokens per second of generation time.
    pub generation_tokens_per_s: f64,
    /// Tool use (all 0 / null when no tools are offered): share of rollouts with at least one
    /// tool call, calls and failed calls (bad JSON, unknown tool, tool error, trap) in the step,
    /// mean reward of rollouts with and without a call (null when there were none), and seconds
    /// spent inside tools. `serde(default)`: metrics of runs from before tools still load.
    #[serde(default)]
    pub tool_call_fraction: f64,
    #[serde(default)]
    pub tool_calls: usize,
    #[serde(default)]
    pub tool_errors: usize,
    #[serde(default)]
    pub reward_with_tool: Option<f64>,
    #[serde(default)]
    pub reward_without_tool: Option<f64>,
    #[serde(default)]
    pub time_tool_s: f64,
}

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const PLOT_FILE: &str = "metrics.png";

pub fn append(run_dir: &Path, m: &StepMetrics) -> Result<()> {
    let path = run_dir.join(METRICS_FILE);
    let mut f = fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn read_all(run_dir: &Path) -> Result<Vec<StepMetrics>> {
    let path = run_dir.join(METRICS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}: not a metrics record", path.display(), i + 1)))
        .collect()
}

/// Keeps the records of steps ≤ `step` (a resumed run rewrites what came after its checkpoint).
pub fn truncate_after(run_dir: &Path, step: u64) -> Result<()> {
    truncate_jsonl_after(&run_dir.join(METRICS_FILE), step)
}

/// Rewrites an append-only JSON Lines log of a run (metrics, rollouts) so that it holds only the
/// records of steps ≤ `step`: a run killed after logging step N but before checkpointing it
/// re-runs step N on `--resume`, and must not leave the first attempt's lines behind. A line
/// cut short by the kill (no closing newline, or not JSON) is dropped too. Lines without a
/// `step` field are kept. The file is replaced atomically (written beside it, then renamed).
pub fn truncate_jsonl_after(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0usize;
    for line in text.split_inclusive('\n') {
        let complete = line.ends_with('\n');
        let record: Option<serde_json::Value> = if complete { serde_json::from_str(line.trim_end()).ok() } else { None };
        let keep = match &record {
            Some(v) => v.get("step").and_then(serde_json::Value::as_u64).is_none_or(|s| s <= step),
            None => line.trim().is_empty() && complete,
        };
        if keep {
            kept.push_str(line);
        } else {
            dropped += 1;
        }
    }
    if dropped == 0 {
        return Ok(());
    }
    let tmp = path.with_extension("jsonl.tmp");
    fs::write(&tmp, kept).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Draws the curves of `metrics` into a PNG (a grid of panels: reward and components, loss,
/// KL, entropy, grad norm, clip fraction, completion length, step time).
pub fn plot(metrics: &[StepMetrics], path: &Path) -> Result<()> {
    let steps: Vec<f64> = metrics.iter().map(|m| m.step as f64).collect();
    // (panel title, [(series name, values per step)])
    let mut panels: Vec<sigmaforge_plot::Panel<'_>> = Vec::new();
    let mut rewards = vec![("total".to_string(), metrics.iter().map(|m| m.reward.mean).collect::<Vec<_>>())];
    let names: std::collections::BTreeSet<&String> = metrics.iter().flat_map(|m| m.reward_components.keys()).collect();
    for n in names {
        rewards.push((n.clone(), metrics.iter().map(|m| m.reward_components.get(n).map_or(0.0, |c| c.mean)).collect()));
    }
    panels.push(("reward (mean)", rewards));
    let one = |name: &str, f: fn(&StepMetrics) -> f64| vec![(name.to_string(), metrics.iter().map(f).collect::<Vec<_>>())];
    panels.push(("loss", one("loss", |m| m.loss)));
    panels.push(("KL", one("kl", |m| m.kl)));
    panels.push(("entropy", one("entropy", |m| m.entropy)));
    panels.push(("grad norm", one("grad_norm", |m| m.grad_norm)));
    panels.push(("clip fraction", one("clip_fraction", |m| m.clip_fraction)));
    panels.push(("completion length", one("tokens", |m| m.completion_length.mean)));
    panels.push((
        "time per step (s)",
        vec![
            ("generation".into(), metrics.iter().map(|m| m.time_generation_s).collect()),
            ("reward wait".into(), metrics.iter().map(|m| m.time_reward_wait_s).collect()),
            ("update".into(), metrics.iter().map(|m| m.time_update_s).collect()),
        ],
    ));

    let tools_used = metrics.iter().any(|m| m.tool_calls > 0);
    if tools_used {
        panels.push((
            "tool use",
            vec![
                ("share of rollouts calling a tool".into(), metrics.iter().map(|m| m.tool_call_fraction).collect()),
                ("reward with a call".into(), metrics.iter().map(|m| m.reward_with_tool.unwrap_or(f64::NAN)).collect()),
                ("reward without".into(), metrics.iter().map(|m| m.reward_without_tool.unwrap_or(f64::NAN)).collect()),
            ],
        ));
    }

    let (rows, height) = if tools_used { (3, 1200) } else { (2, 800) };
    sigmaforge_plot::plot_panels(&steps, &panels, (rows, 4), (1600, height), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trip_truncate_and_plot() {
        let dir = std::env::temp_dir().join(format!("sf-metrics-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for step in 1..=4 {
            let mut m = StepMetrics { step, loss: 0.1 * step as f64, reward: MeanStd { mean: step as f64 / 4.0, std: 0.1 }, ..Default::default() };
            m.reward_components.insert("iou".into(), MeanStd { mean: 0.2, std: 0.0 });
            append(&dir, &m).unwrap();
        }
        assert_eq!(read_all(&dir).unwrap().len(), 4);
        truncate_after(&dir, 2).unwrap();
        let kept = read_all(&dir).unwrap();
        assert_eq!(kept.iter().map(|m| m.step).collect::<Vec<_>>(), vec![1, 2]);
        let png = dir.join(PLOT_FILE);
        plot(&kept, &png).unwrap();
        let bytes = fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mean_std() {
        let m = MeanStd::of(&[1.0, 3.0]);
        assert_eq!((m.mean, m.std), (2.0, 1.0));
    }
}
