//! The per-sample records of an eval and the report computed from them.
//!
//! Conventions: a failed sample (no answer after every retry) counts in every mean with reward
//! and components 0, as a wrong answer would; latency percentiles are over answered samples;
//! tokens and cost per query divide the totals by the number of samples (failed included, so a
//! flaky endpoint's wasted tokens are charged).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sigmaforge_runtime::{ComponentScore, Message};

use crate::policy::Usage;
use crate::prices::Prices;
use crate::stats::{bootstrap_mean_ci95, mean, percentile, share};

/// One line of `completions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub task_id: String,
    /// The analyst persona of the request, when the task plugin names one.
    pub persona: Option<String>,
    /// The chat messages the model was given (after the paraphrase pass, if any).
    pub prompt: Vec<Message>,
    /// The task's own request, when the paraphrase pass reworded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_request: Option<String>,
    /// Why the paraphrase pass left the request as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paraphrase_error: Option<String>,
    /// None when the sample failed.
    pub completion: Option<String>,
    /// Σ weight × value; 0 for a failed sample.
    pub score: f64,
    pub components: Vec<ComponentScore>,
    /// The component details, by name (parse errors, matched / missed counts …).
    pub diagnostics: BTreeMap<String, String>,
    /// Seconds until the final answer (or until giving up).
    pub latency_s: f64,
    pub usage: Usage,
    /// HTTP requests made for the sample.
    pub attempts: u32,
    /// Why earlier attempts failed.
    pub attempt_errors: Vec<String>,
    /// Why the sample failed (no answer), or why the plugin could not score it.
    pub error: Option<String>,
    /// True when the sample got no answer (counted in `failed`).
    pub failed: bool,
    pub tool_calls: u32,
    /// The conversation with tool calls and results, when tools were offered.
    pub transcript: Option<Vec<Value>>,
}

impl SampleRecord {
    pub fn component(&self, name: &str) -> f64 {
        self.components.iter().find(|c| c.name == name).map_or(0.0, |c| c.value)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    pub input_total: u64,
    pub output_total: u64,
    pub input_per_query: f64,
    pub output_per_query: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolMetrics {
    /// The tools offered.
    pub tools: Vec<String>,
    pub max_tool_turns: usize,
    /// Samples with at least one tool call.
    pub samples_with_call: usize,
    /// samples_with_call / samples.
    pub tool_call_share: f64,
    pub tool_calls_total: u64,
    /// Mean reward of the samples that called a tool (None when none did).
    pub mean_reward_with_call: Option<f64>,
    /// Mean reward of the samples that did not.
    pub mean_reward_without_call: Option<f64>,
}

/// The paraphrase pass, when one ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParaphraseSummary {
    pub model: String,
    /// Requests reworded.
    pub paraphrased: usize,
    /// Requests left as they were because the paraphrase failed.
    pub failed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedSample {
    pub task_id: String,
    pub reason: String,
}

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub policy: String,
    pub plugin: String,
    pub split: String,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_at: String,
    pub duration_s: f64,
    pub samples: usize,
    /// Samples without an answer after every retry.
    pub failed: usize,
    /// Answered samples the plugin could not score (scored 0).
    pub score_errors: usize,
    pub mean_reward: f64,
    /// 95 % bootstrap interval of `mean_reward` over the samples (2,000 resamples, fixed seed).
    #[serde(default)]
    pub reward_ci95: Option<[f64; 2]>,
    /// Highest possible reward (Σ weights), for reading `mean_reward`.
    pub max_reward: f64,
    /// Mean value of each reward component.
    pub components: BTreeMap<String, f64>,
    /// The components in the plugin's order, for tables and the chart.
    #[serde(default)]
    pub component_order: Vec<String>,
    /// Share of samples with `yaml_valid` > 0 (tasks with that component).
    pub yaml_valid_rate: Option<f64>,
    /// Share of samples with `logsource_correct` = 1.
    pub logsource_accuracy: Option<f64>,
    pub mean_iou: Option<f64>,
    /// Share of samples with `iou` = 1.
    pub perfect_share: Option<f64>,
    pub latency_p50_s: Option<f64>,
    pub latency_p95_s: Option<f64>,
    pub latency_mean_s: Option<f64>,
    pub tokens: Tokens,
    pub prices: Option<Prices>,
    pub cost_total_usd: Option<f64>,
    pub cost_per_query_usd: Option<f64>,
    pub tools: Option<ToolMetrics>,
    /// Present when the requests were paraphrased first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paraphrase: Option<ParaphraseSummary>,
    pub failures: Vec<FailedSample>,
}

/// What the report needs besides the samples.
pub struct ReportContext<'a> {
    pub model: &'a str,
    pub policy: &'a str,
    pub plugin: &'a str,
    pub split: &'a str,
    pub started_at: String,
    pub duration_s: f64,
    /// Component names and weights, in the plugin's order.
    pub components: &'a [(String, f64)],
    pub prices: Option<Prices>,
    /// (tool names, max tool turns) when tools were offered.
    pub tools: Option<(Vec<String>, usize)>,
    pub paraphrase: Option<ParaphraseSummary>,
}

impl Report {
    pub fn from_samples(ctx: &ReportContext, samples: &[SampleRecord]) -> Report {
        let n = samples.len();
        let rewards: Vec<f64> = samples.iter().map(|s| s.score).collect();
        let column = |name: &str| -> Option<Vec<f64>> {
            ctx.components.iter().any(|(c, _)| c == name).then(|| samples.iter().map(|s| s.component(name)).collect())
        };
        let components = ctx.components.iter().map(|(name, _)| (name.clone(), mean(&column(name).expect("listed")).unwrap_or(0.0))).collect();
        let answered_latency: Vec<f64> = samples.iter().filter(|s| !s.failed).map(|s| s.latency_s).collect();
        let mut usage = Usage::default();
        for s in samples {
            usage.add(s.usage);
        }
        let per_query = |total: u64| if n == 0 { 0.0 } else { total as f64 / n as f64 };
        let cost_total = ctx.prices.map(|p| p.cost(usage));
        let iou = column("iou");
        let tools = ctx.tools.as_ref().map(|(names, turns)| {
            let with: Vec<f64> = samples.iter().filter(|s| s.tool_calls > 0).map(|s| s.score).collect();
            let without: Vec<f64> = samples.iter().filter(|s| s.tool_calls == 0).map(|s| s.score).collect();
            ToolMetrics {
                tools: names.clone(),
                max_tool_turns: *turns,
                samples_with_call: with.len(),
                tool_call_share: if n == 0 { 0.0 } else { with.len() as f64 / n as f64 },
                tool_calls_total: samples.iter().map(|s| u64::from(s.tool_calls)).sum(),
                mean_reward_with_call: mean(&with),
                mean_reward_without_call: mean(&without),
            }
        });
        Report {
            model: ctx.model.to_string(),
            policy: ctx.policy.to_string(),
            plugin: ctx.plugin.to_string(),
            split: ctx.split.to_string(),
            started_at: ctx.started_at.clone(),
            duration_s: ctx.duration_s,
            samples: n,
            failed: samples.iter().filter(|s| s.failed).count(),
            score_errors: samples.iter().filter(|s| !s.failed && s.error.is_some()).count(),
            mean_reward: mean(&rewards).unwrap_or(0.0),
            reward_ci95: bootstrap_mean_ci95(&rewards, 2000, 0x5EED),
            max_reward: ctx.components.iter().map(|(_, w)| w).sum(),
            components,
            component_order: ctx.components.iter().map(|(n, _)| n.clone()).collect(),
            yaml_valid_rate: column("yaml_valid").and_then(|v| share(&v, |x| x > 0.0)),
            logsource_accuracy: column("logsource_correct").and_then(|v| share(&v, |x| x >= 1.0)),
            mean_iou: iou.as_deref().and_then(mean),
            perfect_share: iou.as_deref().and_then(|v| share(v, |x| x >= 1.0)),
            latency_p50_s: percentile(&answered_latency, 50.0),
            latency_p95_s: percentile(&answered_latency, 95.0),
            latency_mean_s: mean(&answered_latency),
            tokens: Tokens {
                input_total: usage.tokens_in,
                output_total: usage.tokens_out,
                input_per_query: per_query(usage.tokens_in),
                output_per_query: per_query(usage.tokens_out),
            },
            prices: ctx.prices,
            cost_total_usd: cost_total,
            cost_per_query_usd: cost_total.map(|c| if n == 0 { 0.0 } else { c / n as f64 }),
            tools,
            paraphrase: ctx.paraphrase.clone(),
            failures: samples
                .iter()
                .filter(|s| s.failed)
                .map(|s| FailedSample { task_id: s.task_id.clone(), reason: s.error.clone().unwrap_or_default() })
                .collect(),
        }
    }

    /// (name, mean) in the plugin's order (the map's order for reports without one).
    pub fn ordered_components(&self) -> Vec<(&str, f64)> {
        let listed = self.component_order.iter().filter_map(|n| self.components.get(n).map(|v| (n.as_str(), *v)));
        let rest = self.components.iter().filter(|(n, _)| !self.component_order.contains(n)).map(|(n, v)| (n.as_str(), *v));
        listed.chain(rest).collect()
    }

    /// `report.md`: a summary table, component means, tool use and the failures.
    pub fn to_markdown(&self) -> String {
        let mut md = format!("# Eval: {}\n\n", self.model);
        md.push_str(&format!(
            "Policy `{}`, plugin `{}`, split `{}`, {} samples ({} failed), started {} ({:.1} s).\n\n",
            self.policy, self.plugin, self.split, self.samples, self.failed, self.started_at, self.duration_s
        ));
        md.push_str(&crate::compare::markdown_table(std::slice::from_ref(self)));
        md.push_str("\n## Reward components (mean)\n\n| component | mean |\n|---|---:|\n");
        for (name, v) in self.ordered_components() {
            md.push_str(&format!("| {name} | {v:.3} |\n"));
        }
        md.push_str(&format!("| **total** (max {:.2}) | **{:.3}** |\n", self.max_reward, self.mean_reward));
        md.push_str(&format!(
            "\n## Latency and tokens\n\n- latency p50 {} s, p95 {} s, mean {} s (answered samples)\n- tokens in {} ({:.1} per query), out {} ({:.1} per query)\n",
            opt(self.latency_p50_s, 2),
            opt(self.latency_p95_s, 2),
            opt(self.latency_mean_s, 2),
            self.tokens.input_total,
            self.tokens.input_per_query,
            self.tokens.output_total,
            self.tokens.output_per_query
        ));
        if let (Some(p), Some(total), Some(per)) = (self.prices, self.cost_total_usd, self.cost_per_query_usd) {
            md.push_str(&format!(
                "- cost ${total:.6} in total, ${per:.6} per query (prices: ${} / ${} per million tokens in / out)\n",
                p.input, p.output
            ));
        }
        if let Some(t) = &self.tools {
            md.push_str(&format!(
                "\n## Tools\n\n- offered: {} (up to {} tool turn(s))\n- samples that called a tool: {} of {} ({:.1}%), {} calls in total\n- mean reward with a call: {}, without: {}\n",
                t.tools.join(", "),
                t.max_tool_turns,
                t.samples_with_call,
                self.samples,
                100.0 * t.tool_call_share,
                t.tool_calls_total,
                opt(t.mean_reward_with_call, 3),
                opt(t.mean_reward_without_call, 3)
            ));
        }
        if let Some(p) = &self.paraphrase {
            md.push_str(&format!(
                "\n## Paraphrase pass\n\n- requests reworded by {}: {} of {} ({} left as they were after a failure)\n",
                p.model, p.paraphrased, self.samples, p.failed
            ));
        }
        if !self.failures.is_empty() {
            md.push_str(&format!("\n## Failed samples ({} of {})\n\n| task | reason |\n|---|---|\n", self.failed, self.samples));
            for f in &self.failures {
                md.push_str(&format!("| {} | {} |\n", f.task_id, f.reason.replace('|', "\\|").replace('\n', " ")));
            }
        }
        md
    }
}

/// A number with `digits` decimals, or `n/a`.
pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.digits$}"))
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn comp(name: &str, value: f64, weight: f64) -> ComponentScore {
        ComponentScore { name: name.into(), value, weight, detail: String::new() }
    }

    /// One sample with the sigma components (none when failed).
    #[allow(clippy::too_many_arguments, reason = "a test fixture: one positional value per column")]
    pub(crate) fn sample(id: &str, y: f64, l: f64, iou: f64, latency: f64, usage: (u64, u64), failed: bool, tool_calls: u32) -> SampleRecord {
        let components = if failed { vec![] } else { vec![comp("yaml_valid", y, 0.1), comp("logsource_correct", l, 0.3), comp("iou", iou, 0.7)] };
        SampleRecord {
            task_id: id.into(),
            persona: None,
            prompt: vec![],
            original_request: None,
            paraphrase_error: None,
            completion: (!failed).then(|| "x".into()),
            score: components.iter().map(|c| c.value * c.weight).sum(),
            components,
            diagnostics: BTreeMap::new(),
            latency_s: latency,
            usage: Usage { tokens_in: usage.0, tokens_out: usage.1 },
            attempts: 1,
            attempt_errors: vec![],
            error: failed.then(|| "HTTP 500: boom (after 2 attempts)".into()),
            failed,
            tool_calls,
            transcript: None,
        }
    }

    pub(crate) fn sigma_components() -> Vec<(String, f64)> {
        vec![("yaml_valid".into(), 0.1), ("logsource_correct".into(), 0.3), ("iou".into(), 0.7)]
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{comp, sample, sigma_components};
    use super::*;

    #[test]
    fn report_maths() {
        let comps = sigma_components();
        let ctx = ReportContext {
            model: "m",
            policy: "openai:http://x/v1#m",
            plugin: "sigma",
            split: "test",
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_s: 1.0,
            components: &comps,
            prices: Some(Prices { input: 1.0, output: 2.0 }),
            tools: Some((vec!["search".into()], 1)),
            paraphrase: None,
        };
        let samples = vec![
            sample("a", 1.0, 1.0, 1.0, 1.0, (100, 10), false, 1), // 1.1
            sample("b", 1.0, 1.0, 0.5, 2.0, (100, 20), false, 0), // 0.75
            sample("c", 0.0, 0.0, 0.0, 3.0, (100, 30), false, 0), // 0
            sample("d", 0.0, 0.0, 0.0, 9.0, (0, 0), true, 0),     // failed
        ];
        let r = Report::from_samples(&ctx, &samples);
        assert_eq!((r.samples, r.failed, r.score_errors), (4, 1, 0));
        assert!((r.mean_reward - (1.1 + 0.75) / 4.0).abs() < 1e-12);
        assert!((r.max_reward - 1.1).abs() < 1e-12);
        assert!((r.components["iou"] - 1.5 / 4.0).abs() < 1e-12);
        assert_eq!(r.yaml_valid_rate, Some(0.5));
        assert_eq!(r.logsource_accuracy, Some(0.5));
        assert_eq!(r.perfect_share, Some(0.25));
        assert!((r.mean_iou.unwrap() - 0.375).abs() < 1e-12);
        // Latency over the three answered samples only.
        assert_eq!(r.latency_p50_s, Some(2.0));
        assert!((r.latency_p95_s.unwrap() - 2.9).abs() < 1e-12);
        assert_eq!((r.tokens.input_total, r.tokens.output_total), (300, 60));
        assert_eq!((r.tokens.input_per_query, r.tokens.output_per_query), (75.0, 15.0));
        let cost = (300.0 * 1.0 + 60.0 * 2.0) / 1e6;
        assert!((r.cost_total_usd.unwrap() - cost).abs() < 1e-15);
        assert!((r.cost_per_query_usd.unwrap() - cost / 4.0).abs() < 1e-15);
        let t = r.tools.as_ref().unwrap();
        assert_eq!((t.samples_with_call, t.tool_calls_total), (1, 1));
        assert_eq!(t.tool_call_share, 0.25);
        assert_eq!(t.mean_reward_with_call, Some(1.1));
        assert!((t.mean_reward_without_call.unwrap() - 0.75 / 3.0).abs() < 1e-12);
        assert_eq!(r.failures, vec![FailedSample { task_id: "d".into(), reason: "HTTP 500: boom (after 2 attempts)".into() }]);
        assert_eq!(r.ordered_components().iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["yaml_valid", "logsource_correct", "iou"]);
        let md = r.to_markdown();
        assert!(md.contains("## Failed samples (1 of 4)") && md.contains("| d | HTTP 500: boom"), "{md}");
        assert!(md.contains("samples that called a tool: 1 of 4 (25.0%)"), "{md}");
    }

    #[test]
    fn plugins_without_sigma_components_leave_the_sigma_rates_empty() {
        let comps = vec![("exact".to_string(), 1.0)];
        let ctx = ReportContext {
            model: "m",
            policy: "p",
            plugin: "regex",
            split: "test",
            started_at: String::new(),
            duration_s: 0.0,
            components: &comps,
            prices: None,
            tools: None,
            paraphrase: None,
        };
        let mut s = sample("a", 0.0, 0.0, 0.0, 1.0, (1, 1), false, 0);
        s.components = vec![comp("exact", 1.0, 1.0)];
        s.score = 1.0;
        let r = Report::from_samples(&ctx, &[s]);
        assert_eq!(r.components["exact"], 1.0);
        assert_eq!((r.yaml_valid_rate, r.mean_iou, r.perfect_share, r.cost_per_query_usd), (None, None, None, None));
    }
}
