//! One eval: a task plugin's tasks → the policy's answers → the plugin's scores → the report.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sigmaforge_runtime::{ScoreResult, TaskPlugin, TaskRef};

use crate::output::utc_timestamp;
use crate::paraphrase::{Paraphrased, paraphrase_prompts};
use crate::policy::Policy;
use crate::prices::Prices;
use crate::report::{ParaphraseSummary, Report, ReportContext, SampleRecord};
use crate::tools::Toolbox;

pub struct EvalOptions {
    pub split: String,
    /// Only the first N tasks of the split.
    pub limit: Option<usize>,
    pub prices: Option<Prices>,
    /// No progress bar.
    pub quiet: bool,
    /// Rewords each request with this model before the evaluated one answers.
    pub paraphraser: Option<Box<dyn Policy>>,
}

fn progress_bar(quiet: bool, len: usize, message: String) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})").expect("valid template").progress_chars("=> "),
    );
    bar.set_message(message);
    bar
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

    let mut prompts: Vec<_> = tasks.iter().map(|t| t.prompt.clone()).collect();
    let paraphrased: Vec<Paraphrased> = match &opts.paraphraser {
        Some(p) => {
            let bar = progress_bar(opts.quiet, prompts.len(), format!("paraphrase with {}", p.model()));
            let out = paraphrase_prompts(p.as_ref(), &mut prompts, &|| bar.inc(1));
            bar.finish_and_clear();
            out
        }
        None => vec![Paraphrased::Skipped; prompts.len()],
    };
    let progress = progress_bar(opts.quiet, prompts.len(), format!("eval {}", policy.model()));
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
        .zip(prompts)
        .zip(outcomes.into_iter().zip(paraphrased))
        .map(|((task, prompt), (outcome, paraphrased))| {
            let persona = task.metadata.get("persona").and_then(|p| p.as_str()).map(str::to_string);
            let (original_request, paraphrase_error) = match paraphrased {
                Paraphrased::Done { original } => (Some(original), None),
                Paraphrased::Failed { reason } => (None, Some(reason)),
                Paraphrased::Skipped => (None, None),
            };
            let (trace, completion, score, error) = match outcome {
                Ok(c) => {
                    let score: ScoreResult = scores.next().expect("one score per answered sample");
                    let error = score.error.clone();
                    (c.trace, Some(c.text), Some(score), error)
                }
                Err(f) => (f.trace, None, None, Some(f.reason)),
            };
            let failed = completion.is_none();
            let (total, components) = score.map_or((0.0, Vec::new()), |s| (s.total, s.components));
            let diagnostics: BTreeMap<String, String> = components.iter().map(|c| (c.name.clone(), c.detail.clone())).collect();
            let mut record = SampleRecord {
                task_id: task.id,
                persona,
                prompt,
                original_request: None,
                paraphrase_error: None,
                completion,
                score: total,
                components,
                diagnostics,
                latency_s: trace.latency_s,
                usage: trace.usage,
                attempts: trace.attempts,
                attempt_errors: trace.attempt_errors,
                error,
                failed,
                tool_calls: trace.tool_calls,
                transcript: trace.transcript,
            };
            record.original_request = original_request;
            record.paraphrase_error = paraphrase_error;
            record
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
        paraphrase: opts.paraphraser.as_ref().map(|p| ParaphraseSummary {
            model: p.model().to_string(),
            paraphrased: samples.iter().filter(|s| s.original_request.is_some()).count(),
            failed: samples.iter().filter(|s| s.paraphrase_error.is_some()).count(),
        }),
    };
    let report = Report::from_samples(&ctx, &samples);
    Ok(EvalRun { report, samples })
}
