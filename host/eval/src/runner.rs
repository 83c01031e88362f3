//! One eval: a task plugin's tasks → the policy's answers → the plugin's scores → the report.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sigmaforge_runtime::{ScoreResult, TaskPlugin, TaskRef};

use crate::journal::{Entry, Journal};
use crate::output::utc_timestamp;
use crate::paraphrase::{Paraphrased, paraphrase_prompts};
use crate::policy::{Outcome, Policy};
use crate::prices::Prices;
use crate::report::{ParaphraseSummary, Report, ReportContext, SampleRecord};
use sigmaforge_reward::Toolbox;

pub struct EvalOptions {
    pub split: String,
    /// Only the first N tasks of the split.
    pub limit: Option<usize>,
    pub prices: Option<Prices>,
    /// No progress bar.
    pub quiet: bool,
    /// Rewords each request with this model before the evaluated one answers.
    pub paraphraser: Option<Box<dyn Policy>>,
    /// Where each answer is journaled the moment it arrives (`answers.jsonl`), so that an
    /// interrupted eval can be resumed.
    pub journal: Option<Journal>,
    /// Samples an earlier, interrupted run of this eval already answered, by task id: kept as
    /// they were (prompt, paraphrase, answer, usage), and only scored again.
    pub resumed: HashMap<String, Entry>,
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

    // Tasks an earlier run of this eval answered keep that answer; the rest are asked now.
    let pending: Vec<usize> = (0..tasks.len()).filter(|&i| !opts.resumed.contains_key(&tasks[i].id)).collect();
    let mut prompts: Vec<_> = pending.iter().map(|&i| tasks[i].prompt.clone()).collect();
    let paraphrased: Vec<Paraphrased> = match &opts.paraphraser {
        Some(p) if !prompts.is_empty() => {
            let bar = progress_bar(opts.quiet, prompts.len(), format!("paraphrase with {}", p.model()));
            let out = paraphrase_prompts(p.as_ref(), &mut prompts, &|| bar.inc(1));
            bar.finish_and_clear();
            out
        }
        _ => vec![Paraphrased::Skipped; prompts.len()],
    };
    let paraphrase_info = |p: &Paraphrased| match p {
        Paraphrased::Done { original } => (Some(original.clone()), None),
        Paraphrased::Failed { reason } => (None, Some(reason.clone())),
        Paraphrased::Skipped => (None, None),
    };
    let progress = progress_bar(opts.quiet, prompts.len(), format!("eval {}", policy.model()));
    let journal_failed = AtomicBool::new(false);
    let outcomes = policy.complete_all(&prompts, tools, &|k, outcome: &Outcome| {
        progress.inc(1);
        let Some(journal) = &opts.journal else { return };
        let (original_request, paraphrase_error) = paraphrase_info(&paraphrased[k]);
        let entry =
            Entry { task_id: tasks[pending[k]].id.clone(), prompt: prompts[k].clone(), original_request, paraphrase_error, outcome: outcome.clone() };
        // Losing the journal costs the ability to resume, not the eval: say so once, go on.
        if let Err(e) = journal.append(&entry)
            && !journal_failed.swap(true, Ordering::Relaxed)
        {
            progress.suspend(|| eprintln!("warning: {e:#}; this eval can no longer be resumed"));
        }
    });
    progress.finish_and_clear();

    // Every task's sample, in task order: resumed ones as journaled, the others as just asked.
    let mut fresh = prompts.into_iter().zip(outcomes.into_iter().zip(paraphrased));
    let entries: Vec<Entry> = tasks
        .iter()
        .map(|task| match opts.resumed.get(&task.id) {
            Some(e) => e.clone(),
            None => {
                let (prompt, (outcome, paraphrased)) = fresh.next().expect("one fresh sample per pending task");
                let (original_request, paraphrase_error) = paraphrase_info(&paraphrased);
                Entry { task_id: task.id.clone(), prompt, original_request, paraphrase_error, outcome }
            }
        })
        .collect();

    // Score every answered sample in one batch.
    let answered: Vec<(TaskRef, String)> =
        entries.iter().filter_map(|e| e.outcome.as_ref().ok().map(|c| (TaskRef::Id(e.task_id.clone()), c.text.clone()))).collect();
    let mut scores = sigmaforge_reward::score_checked(plugin, &answered).into_iter();

    let samples: Vec<SampleRecord> = tasks
        .into_iter()
        .zip(entries)
        .map(|(task, entry)| {
            let persona = task.metadata.get("persona").and_then(|p| p.as_str()).map(str::to_string);
            let (trace, completion, score, error) = match entry.outcome {
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
            SampleRecord {
                task_id: task.id,
                persona,
                prompt: entry.prompt,
                original_request: entry.original_request,
                paraphrase_error: entry.paraphrase_error,
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
        paraphrase: opts.paraphraser.as_ref().map(|p| ParaphraseSummary {
            model: p.model().to_string(),
            paraphrased: samples.iter().filter(|s| s.original_request.is_some()).count(),
            failed: samples.iter().filter(|s| s.paraphrase_error.is_some()).count(),
        }),
    };
    let report = Report::from_samples(&ctx, &samples);
    Ok(EvalRun { report, samples })
}
