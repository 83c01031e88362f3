//! Several reports as one Markdown table, models as rows (the layout of the reference work's
//! tables: reward, YAML valid, logsource accuracy, IoU, perfect rules, latency, cost).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use std::collections::BTreeMap;

use crate::report::{Report, SampleRecord, opt};

/// Reads a `report.json`, or the `report.json` inside a directory.
pub fn load_report(path: &Path) -> Result<Report> {
    let file: PathBuf = if path.is_dir() { path.join("report.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read report {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a sigmaforge eval report.json", file.display()))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{:.1}%", 100.0 * x))
}

fn cost(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("${x:.5}"))
}

/// Per-task scores from an eval directory's `completions.jsonl` (task id → score), or `None`
/// when the path is a bare `report.json` or the directory has no completions.
pub fn load_task_scores(path: &Path) -> Result<Option<BTreeMap<String, f64>>> {
    let file = path.join(crate::output::COMPLETIONS);
    if !path.is_dir() || !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut scores = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: SampleRecord = serde_json::from_str(line).with_context(|| format!("{}:{}: not a completion record", file.display(), i + 1))?;
        scores.insert(record.task_id, record.score);
    }
    Ok(Some(scores))
}

/// One model's reward against the model listed before it, task by task (the tasks both evals
/// scored).
#[derive(Clone, Debug, PartialEq)]
pub struct PairedDifference {
    pub model: String,
    pub baseline: String,
    /// Tasks scored in both.
    pub tasks: usize,
    /// Mean of (this model's reward − the baseline's) over those tasks.
    pub mean: f64,
    /// 95 % bootstrap interval of that mean, resampling tasks (pairs kept together).
    pub ci95: Option<[f64; 2]>,
    pub better: usize,
    pub worse: usize,
}

impl PairedDifference {
    /// Whether the interval lies wholly above (`Some(true)`) or below (`Some(false)`) zero.
    pub fn beyond_zero(&self) -> Option<bool> {
        match self.ci95 {
            Some([lo, _]) if lo > 0.0 => Some(true),
            Some([_, hi]) if hi < 0.0 => Some(false),
            _ => None,
        }
    }
}

/// Paired differences of every model against the one listed before it (base → SFT → GRPO: what
/// each stage adds). On the same tasks the difference of two means has a much narrower
/// interval than either mean's own (the tasks' difficulty cancels out), so this says whether a
/// model beats the previous one beyond noise.
pub fn paired_differences(models: &[(String, BTreeMap<String, f64>)]) -> Vec<PairedDifference> {
    models
        .windows(2)
        .map(|pair| {
            let [(baseline, base), (model, scores)] = pair else { unreachable!("windows of two") };
            let diffs: Vec<f64> = scores.iter().filter_map(|(task, s)| base.get(task).map(|b| s - b)).collect();
            PairedDifference {
                model: model.clone(),
                baseline: baseline.clone(),
                tasks: diffs.len(),
                mean: crate::stats::mean(&diffs).unwrap_or(0.0),
                ci95: crate::stats::bootstrap_mean_ci95(&diffs, 10_000, 0x5EED),
                better: diffs.iter().filter(|d| **d > 0.0).count(),
                worse: diffs.iter().filter(|d| **d < 0.0).count(),
            }
        })
        .collect()
}

/// The paired differences as Markdown lines under the table.
pub fn markdown_paired(diffs: &[PairedDifference]) -> String {
    let mut md = String::new();
    for d in diffs {
        let interval =
            d.ci95.map_or_else(|| "no interval (fewer than 2 shared tasks)".to_string(), |[lo, hi]| format!("95% CI [{lo:+.3}, {hi:+.3}]"));
        let verdict = match d.beyond_zero() {
            Some(true) => "better beyond the interval",
            Some(false) => "worse beyond the interval",
            None => "no difference beyond the interval",
        };
        md.push_str(&format!(
            "\n{} − {} on the same {} tasks: reward {:+.3}, {interval} (paired bootstrap over tasks); better on {}, worse on {}: {verdict}.\n",
            d.model.replace('|', "\\|"),
            d.baseline.replace('|', "\\|"),
            d.tasks,
            d.mean,
            d.better,
            d.worse
        ));
    }
    md
}

/// The comparison table. A "Tool calls" column appears when any report offered tools.
pub fn markdown_table(reports: &[Report]) -> String {
    let with_tools = reports.iter().any(|r| r.tools.is_some());
    let mut md = String::from(
        "| Model | Reward | Reward 95% CI | YAML valid | Logsource acc. | IoU | Perfect | p50 latency (s) | p95 latency (s) | Cost/query | Samples | Failed |",
    );
    md.push_str(if with_tools { " Tool calls |\n" } else { "\n" });
    md.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    md.push_str(if with_tools { "---:|\n" } else { "\n" });
    for r in reports {
        md.push_str(&format!(
            "| {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.model.replace('|', "\\|"),
            r.mean_reward,
            r.reward_ci95.map_or_else(|| "—".to_string(), |[lo, hi]| format!("[{lo:.3}, {hi:.3}]")),
            pct(r.yaml_valid_rate),
            pct(r.logsource_accuracy),
            opt(r.mean_iou, 3),
            pct(r.perfect_share),
            opt(r.latency_p50_s, 2),
            opt(r.latency_p95_s, 2),
            cost(r.cost_per_query_usd),
            r.samples,
            r.failed
        ));
        if with_tools {
            md.push_str(&format!(" {} |", r.tools.as_ref().map_or_else(|| "—".to_string(), |t| pct(Some(t.tool_call_share)))));
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_differences_use_shared_tasks_and_say_when_a_model_is_better_beyond_noise() {
        let scores = |v: &[(&str, f64)]| v.iter().map(|(t, s)| (t.to_string(), *s)).collect::<BTreeMap<_, _>>();
        // Hard and easy tasks: each model's own interval is wide, the paired one is not.
        let base: Vec<(String, f64)> = (0..40).map(|i| (format!("t{i}"), if i % 2 == 0 { 0.1 } else { 0.9 })).collect();
        let better: Vec<(String, f64)> = base.iter().map(|(t, s)| (t.clone(), s + 0.05)).collect();
        let same: Vec<(String, f64)> = base
            .iter()
            .enumerate()
            .map(|(i, (t, s))| {
                (
                    t.clone(),
                    if i % 4 == 0 {
                        s + 0.1
                    } else if i % 4 == 1 {
                        s - 0.1
                    } else {
                        *s
                    },
                )
            })
            .collect();
        let mut extra = scores(&[("only-here", 1.0)]);
        extra.extend(better.iter().cloned());
        // Each model against the one before it: noise -> sft (no real change), sft -> grpo.
        let models =
            vec![("noise".to_string(), same.into_iter().collect()), ("sft".to_string(), base.into_iter().collect()), ("grpo".to_string(), extra)];
        let d = paired_differences(&models);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].model.as_str(), d[0].baseline.as_str()), ("sft", "noise"));
        assert_eq!(d[0].beyond_zero(), None);
        assert_eq!((d[0].better, d[0].worse), (10, 10));
        assert_eq!((d[1].tasks, d[1].better, d[1].worse), (40, 40, 0), "the task only one eval has is left out");
        assert!((d[1].mean - 0.05).abs() < 1e-9);
        assert_eq!(d[1].beyond_zero(), Some(true));
        let md = markdown_paired(&d);
        assert!(md.contains("grpo − sft on the same 40 tasks: reward +0.050, 95% CI [+0.050, +0.050]"), "{md}");
        assert!(md.contains("better beyond the interval") && md.contains("no difference beyond the interval"), "{md}");
    }
    use crate::prices::Prices;
    use crate::report::{ReportContext, tests_support};

    #[test]
    fn table_has_one_row_per_model_and_formats_rates() {
        let comps = tests_support::sigma_components();
        let ctx = |model: &'static str, prices| ReportContext {
            model,
            policy: "p",
            plugin: "sigma",
            split: "test",
            started_at: String::new(),
            duration_s: 0.0,
            components: &comps,
            prices,
            tools: None,
            paraphrase: None,
        };
        let a = Report::from_samples(
            &ctx("gpt-x", Some(Prices { input: 1.0, output: 1.0 })),
            &[
                tests_support::sample("t1", 1.0, 1.0, 1.0, 1.5, (500, 500), false, 0),
                tests_support::sample("t2", 1.0, 0.0, 0.0, 2.5, (500, 500), false, 0),
            ],
        );
        let b = Report::from_samples(&ctx("small|model", None), &[tests_support::sample("t1", 0.0, 0.0, 0.0, 0.2, (1, 1), true, 0)]);
        let md = markdown_table(&[a.clone(), b]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4, "{md}");
        assert!(!lines[0].contains("Tool calls"));
        let [lo, hi] = a.reward_ci95.expect("two samples have an interval");
        assert!(lo <= a.mean_reward && a.mean_reward <= hi, "[{lo}, {hi}]");
        assert_eq!(lines[2], format!("| gpt-x | 0.600 | [{lo:.3}, {hi:.3}] | 100.0% | 50.0% | 0.500 | 50.0% | 2.00 | 2.45 | $0.00100 | 2 | 0 |"));
        assert_eq!(lines[3], "| small\\|model | 0.000 | — | 0.0% | 0.0% | 0.000 | 0.0% | n/a | n/a | n/a | 1 | 1 |");

        let dir = std::env::temp_dir().join(format!("sf-eval-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("report.json"), serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(load_report(&dir).unwrap(), a);
        std::fs::write(dir.join("bad.json"), "{}").unwrap();
        let e = format!("{:#}", load_report(&dir.join("bad.json")).unwrap_err());
        assert!(e.contains("bad.json is not a sigmaforge eval report.json"), "{e}");
        assert!(load_report(&dir.join("missing.json")).is_err());
    }
}
