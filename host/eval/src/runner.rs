//! One eval: a task plugin's tasks → the policy's answers → the plugin's scores → the report.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sigmaforge_runtime::{ScoreResult, TaskPlugin, TaskRef};

use crate::output::utc_timestamp;
use crate::policy::Policy;
use crate::prices::Prices;
use crate::report::{Report, ReportContext, SampleRecord};
use crate::tools::Toolbox;

pub struct EvalOptions {
    pub split: String,
    /// Only the first N tasks of the split.
    pub limit: Option<usize>,
    pub prices: Option<Prices>,
    /// No progress bar.
    pub quiet: bool,
}

pub struct EvalRun {
    pub report: Report,
    pub samples: Vec<SampleRecord>,
}

/// Runs the eval. Errors only on bad input (unknown split, no tasks); a sample the policy could
/// not answer is recorded as failed, one the plugin could not score scores 0 with its error.
pub fn run_eval(plugin: &TaskPlugin, policy: &dyn Policy, tools: Option<&Toolbox>, opts: &EvalOptions) -> Result<EvalRun> {
    let started_at = utc_timestamp();
    let start = Instant::now();
    let mut tasks = plugin.list_tasks(&opts.split)?;
    if let Some(n) = opts.limit {
        tasks.truncate(n);
    }
    if tasks.is_empty() {
        bail!("plugin `{}` has no tasks in split `{}`", plugin.name(), opts.split);
    }
    let tools = tools.filter(|t| !t.is_empty() && policy.supports_tools());

    let progress = if opts.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(tasks.len() as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("eval {}", policy.model()));
        bar
    };
    let prompts: Vec<_> = tasks.iter().map(|t| t.prompt.clone()).collect();
    let outcomes = policy.complete_all(&prompts, tools, &|| progress.inc(1));
    progress.finish_and_clear();

    // Score every answered sample in one batch.
    let answered: Vec<(TaskRef, String)> = tasks
        .iter()
        .zip(&outcomes)
        .filter_map(|(t, o)| o.as_ref().ok().map(|c| (TaskRef::Id(t.id.clone()), c.text.clone())))
        .collect();
    let mut scores = plugin.score_batch(&answered).into_iter();

    let samples: Vec<SampleRecord> = tasks
        .into_iter()
        .zip(outcomes)
        .map(|(task, outcome)| {
            let persona = task.metadata.get("persona").and_then(|p| p.as_str()).map(str::to_string);
            match outcome {
                Ok(c) => {
                    let score: ScoreResult = scores.next().expect("one score per answered sample");
                    let diagnostics: BTreeMap<String, String> = score.components.iter().map(|c| (c.name.clone(), c.detail.clone())).collect();
                    SampleRecord {
                        task_id: task.id,
                        persona,
                        prompt: task.prompt,
                        completion: Some(c.text),
                        score: score.total,
                        components: score.components,
                        diagnostics,
                        latency_s: c.latency_s,
                        usage: c.usage,
                        attempts: c.attempts,
                        attempt_errors: c.attempt_errors,
                        error: score.error,
                        failed: false,
                        tool_calls: c.tool_calls,
                        transcript: c.transcript,
                    }
                }
                Err(f) => SampleRecord {
                    task_id: task.id,
                    persona,
                    prompt: task.prompt,
                    completion: None,
                    score: 0.0,
                    components: Vec::new(),
                    diagnostics: BTreeMap::new(),
                    latency_s: f.latency_s,
                    usage: f.usage,
                    attempts: f.attempts,
                    attempt_errors: f.attempt_errors,
                    error: Some(f.reason),
                    failed: true,
                    tool_calls: f.tool_calls,
                    transcript: f.transcript,
                },
            }
        })
        .collect();

    let spec = policy.spec();
    let ctx = ReportContext {
        model: policy.model(),
        policy: &spec,
        plugin: plugin.name(),
        split: &opts.split,
        started_at,
        duration_s: start.elapsed().as_secs_f64(),
        components: plugin.components(),
        prices: opts.prices,
        tools: tools.map(|t| (t.names(), t.max_turns)),
    };
    let report = Report::from_samples(&ctx, &samples);
    Ok(EvalRun { report, samples })
}
