//! `sigmaforge eval`: measure a model on a task plugin's tasks; `sigmaforge eval-compare`:
//! combine eval reports into one table.
//!
//! ```text
//! sigmaforge eval --plugins sigma.wasm [--plugins search.wasm] [--data DIR] --policy <spec>
//!                 [--split test] [--limit N] [--out DIR | --resume DIR] [--concurrency 8] [--timeout SECS]
//!                 [--retries N] [--temperature T] [--max-tokens N] [--price-in USD --price-out USD]
//! sigmaforge eval-compare <report.json|dir>... [--out table.md]
//! ```
//! Policies: `openai:<base_url>#<model>` (any OpenAI-compatible server) or
//! `local:<model dir or .gguf>` (the project's candle model). The eval exits 0 when it finished,
//! even if samples failed (it says how many); bad input exits non-zero.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sigmaforge_eval::compare::{load_report, load_task_scores, markdown_paired, markdown_table, paired_differences};
use sigmaforge_eval::local::{LocalOptions, LocalPolicy};
use sigmaforge_eval::openai::{OpenAiOptions, OpenAiPolicy};
use sigmaforge_eval::{EvalKey, EvalOptions, Journal, Policy, PolicySpec, Prices, output, run_eval};
use sigmaforge_reward::{ToolRunner, Toolbox};
use sigmaforge_runtime::{PluginConfig, PluginsConfig};

use super::plugin::{data_dir, new_runtime};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The task plugin (.wasm or plugins config); repeat to add tool plugins (e.g. search.wasm),
    /// which are offered to the model as functions.
    #[arg(long = "plugins", value_name = "WASM|CONFIG", required = true)]
    plugins: Vec<PathBuf>,
    /// Data directory granted read-only at /data to bare .wasm plugins
    /// (default: $SIGMAFORGE_DATA, then ../shared/data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// `openai:<base_url>#<model>` or `local:<model dir or .gguf>` (`local:default`: the
    /// default model of `run`, SmolLM2-135M-Instruct).
    #[arg(long)]
    policy: String,
    /// The task split to evaluate on.
    #[arg(long, default_value = "test")]
    split: String,
    /// Only the first N tasks of the split.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Output directory (default: evals/<model>-<UTC stamp>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue an interrupted eval in DIR: keep the samples its answers.jsonl holds, ask only
    /// for the others (failed ones again), and rewrite its report.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Seeds the sampling of a local model and the retry jitter.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling temperature (openai: not sent unless given; local: default 0 = greedy).
    #[arg(long)]
    temperature: Option<f64>,
    /// Most tokens per answer (openai: `max_tokens`, not sent unless given; local: default 512).
    #[arg(long, value_name = "N")]
    max_tokens: Option<u32>,
    /// openai: requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    concurrency: usize,
    /// openai: seconds per request, from connecting to the last byte of the reply.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    timeout: f64,
    /// openai: retries of a request after a timeout, connection error, 429/5xx, or an empty,
    /// non-JSON or choice-less body.
    #[arg(long, value_name = "N", default_value_t = 3)]
    retries: u32,
    /// openai: seconds before the first retry; doubles on each later one (±50% jitter).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    retry_backoff: f64,
    /// openai: the environment variable holding the API key (none set = no Authorization header).
    #[arg(long, value_name = "NAME", default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// openai: model turns that may call the tool plugins; after that the model must answer.
    #[arg(long, value_name = "N", default_value_t = 1)]
    max_tool_turns: usize,
    /// local: prompts generated together.
    #[arg(long, value_name = "N", default_value_t = 8)]
    batch_size: usize,
    /// local: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// USD per million input tokens (with --price-out).
    #[arg(long, value_name = "USD_PER_MTOK", requires = "price_out")]
    price_in: Option<f64>,
    /// USD per million output tokens (with --price-in).
    #[arg(long, value_name = "USD_PER_MTOK", requires = "price_in")]
    price_out: Option<f64>,
    /// A prices YAML (`<model>: {input: USD_PER_MTOK, output: USD_PER_MTOK}`); the entry of the
    /// policy's model is used.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["price_in", "price_out"])]
    prices: Option<PathBuf>,
    /// Reword each request with this chat model first (`openai:<base_url>#<model>` or
    /// `local:<path>`, temperature 0); the original is kept in completions.jsonl.
    #[arg(long, value_name = "SPEC")]
    paraphrase: Option<String>,
    /// The environment variable holding the paraphrase endpoint's API key (default: none, no
    /// Authorization header).
    #[arg(long, value_name = "NAME", requires = "paraphrase")]
    paraphrase_api_key_env: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// The name of this model in the report and in `eval-compare` tables (default: the
    /// policy's model name), e.g. `base`, `sft`, `sft+grpo`.
    #[arg(long, value_name = "NAME")]
    label: Option<String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    // Cheap checks first, so a typo fails before plugins load.
    let spec = PolicySpec::parse(&args.policy)?;
    let paraphrase_spec = args.paraphrase.as_deref().map(PolicySpec::parse).transpose().context("--paraphrase")?;
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds, got {}", args.timeout);
    }
    if !(args.retry_backoff.is_finite() && args.retry_backoff >= 0.0) {
        bail!("--retry-backoff must be >= 0 seconds, got {}", args.retry_backoff);
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if let Some(t) = args.temperature
        && !(t.is_finite() && t >= 0.0)
    {
        bail!("--temperature must be >= 0, got {t}");
    }
    let model_name = match &spec {
        PolicySpec::OpenAi { model, .. } => model.clone(),
        PolicySpec::Local { path } => PathBuf::from(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.clone()),
    };
    let prices = match (&args.prices, args.price_in, args.price_out) {
        (Some(file), _, _) => Some(Prices::from_file(file, &model_name)?),
        (None, Some(i), Some(o)) => Some(Prices::new(i, o)?),
        _ => None,
    };

    let (task_plugin, tool_plugins) = load_plugins(&args)?;
    if !task_plugin.splits().iter().any(|s| s == &args.split) {
        bail!("unknown split `{}`: plugin `{}` has {}", args.split, task_plugin.name(), task_plugin.splits().join(", "));
    }

    let api_key = std::env::var(&args.api_key_env).ok();
    let policy = build_policy(&spec, &args, api_key, args.temperature, args.max_tokens)?;
    let paraphraser = match &paraphrase_spec {
        Some(p) => {
            let key = args.paraphrase_api_key_env.as_ref().and_then(|name| std::env::var(name).ok());
            Some(build_policy(p, &args, key, Some(0.0), None)?)
        }
        None => None,
    };
    let toolbox = (!tool_plugins.is_empty()).then(|| Toolbox::new(tool_plugins, args.max_tool_turns));
    if let Some(tb) = &toolbox
        && !policy.supports_tools()
    {
        eprintln!("warning: policy {} cannot call tools; evaluating without {}", policy.spec(), tb.names().join(", "));
    }

    // Answers are journaled as they arrive, so an interrupted eval resumes where it stopped.
    let key = EvalKey { model: policy.model().to_string(), plugin: task_plugin.name().to_string(), split: args.split.clone() };
    let (out_dir, journal, resumed) = match &args.resume {
        Some(dir) => {
            let r = Journal::resume(dir, &key)?;
            if !r.unreadable.is_empty() {
                eprintln!(
                    "warning: {}: line(s) {:?} could not be read (cut short when the eval stopped?); those samples are asked again",
                    r.journal.path().display(),
                    r.unreadable
                );
            }
            eprintln!("resuming {}: {} answered sample(s) kept, the others are asked now", dir.display(), r.answered.len());
            (dir.clone(), r.journal, r.answered)
        }
        None => {
            let dir = args.out.clone().unwrap_or_else(|| output::default_out_dir(policy.model()));
            let journal = Journal::create(&dir, &key)?;
            (dir, journal, Default::default())
        }
    };
    let options =
        EvalOptions { split: args.split.clone(), limit: args.limit, prices, quiet: args.quiet, paraphraser, journal: Some(journal), resumed };
    let mut run = run_eval(&task_plugin, policy.as_ref(), toolbox.as_ref(), &options)?;
    if let Some(label) = &args.label {
        run.report.model = label.clone();
    }
    output::write_all(&out_dir, &run.report, &run.samples)?;

    let r = &run.report;
    println!("{}", markdown_table(std::slice::from_ref(r)));
    if let Some(t) = &r.tools {
        println!("tool calls: {} of {} samples ({:.1}%)", t.samples_with_call, r.samples, 100.0 * t.tool_call_share);
    }
    if let Some(p) = &r.paraphrase
        && p.failed > 0
    {
        println!("{} of {} requests could not be paraphrased and were asked as written", p.failed, r.samples);
    }
    if r.failed > 0 {
        println!("{} of {} samples failed (reasons in {}/report.md)", r.failed, r.samples, out_dir.display());
    }
    eprintln!("report: {}/report.json, report.md, report.png; completions: {}/completions.jsonl", out_dir.display(), out_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The policy a spec names, with the client flags of `args`.
fn build_policy(
    spec: &PolicySpec,
    args: &Args,
    api_key: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
) -> Result<Box<dyn Policy>> {
    Ok(match spec {
        PolicySpec::OpenAi { base_url, model } => Box::new(OpenAiPolicy::new(OpenAiOptions {
            base_url: base_url.clone(),
            model: model.clone(),
            api_key: api_key.filter(|k| !k.trim().is_empty()),
            concurrency: args.concurrency,
            timeout: Duration::from_secs_f64(args.timeout),
            retries: args.retries,
            backoff: Duration::from_secs_f64(args.retry_backoff),
            temperature,
            max_tokens,
            seed: args.seed,
        })),
        PolicySpec::Local { path } => {
            let opts = LocalOptions {
                temperature: temperature.unwrap_or(0.0),
                max_tokens: max_tokens.unwrap_or(512) as usize,
                batch_size: args.batch_size,
                seed: args.seed,
                device: args.device.clone(),
            };
            eprintln!("loading {path}");
            Box::new(LocalPolicy::load(std::path::Path::new(path), &opts)?)
        }
    })
}

/// The task plugin and the tool plugins of an eval.
type EvalPlugins = (Arc<sigmaforge_runtime::TaskPlugin>, Vec<Arc<dyn ToolRunner>>);

/// The one task plugin and every tool plugin named by --plugins.
fn load_plugins(args: &Args) -> Result<EvalPlugins> {
    let data = data_dir(args.data.as_deref())?;
    let mut all = PluginsConfig::default();
    for path in &args.plugins {
        let is_config = matches!(path.extension().and_then(|e| e.to_str()), Some("yml" | "yaml" | "json"));
        if is_config {
            all.plugins.extend(PluginsConfig::from_file(path)?.plugins);
        } else {
            if !path.is_file() {
                bail!("plugin {} does not exist or is not a file", path.display());
            }
            let mut p = PluginConfig::from_path(path);
            if let Some(d) = &data {
                p = p.with_data(d);
            }
            if all.plugins.contains_key(&p.name) {
                bail!("two plugins are named `{}` ({}); rename one file", p.name, path.display());
            }
            all.plugins.insert(p.name.clone(), p);
        }
    }
    let set = new_runtime()?.load_all(&all)?;
    let task = match set.tasks.len() {
        1 => set.tasks.values().next().expect("one").clone(),
        0 => bail!(
            "no task plugin among --plugins (loaded tools: {}); pass one, e.g. --plugins sigma.wasm",
            set.tools.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        _ => bail!("several task plugins loaded ({}); evaluate one at a time", set.tasks.keys().cloned().collect::<Vec<_>>().join(", ")),
    };
    let tools: Vec<Arc<dyn ToolRunner>> = set.tools.values().map(|t| t.clone() as Arc<dyn ToolRunner>).collect();
    Ok((task, tools))
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Eval reports: report.json files or the eval output directories holding them.
    #[arg(required = true, value_name = "REPORT")]
    reports: Vec<PathBuf>,
    /// Also write the table to this Markdown file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Also draw the reports side by side (reward with its 95 % interval, and each component)
    /// into this PNG: e.g. base → SFT → GRPO.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

pub fn run_compare(args: CompareArgs) -> Result<ExitCode> {
    let reports = args.reports.iter().map(|p| load_report(p)).collect::<Result<Vec<_>>>()?;
    let mut table = markdown_table(&reports);
    // With eval directories (not bare report.json files), each model is also compared with the
    // one before it, task by task.
    let mut per_task = Vec::new();
    for (path, report) in args.reports.iter().zip(&reports) {
        if let Some(scores) = load_task_scores(path)? {
            per_task.push((report.model.clone(), scores));
        }
    }
    if per_task.len() == reports.len() && reports.len() > 1 {
        table.push_str(&markdown_paired(&paired_differences(&per_task)));
    }
    print!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if let Some(png) = &args.plot {
        sigmaforge_eval::plot::plot_comparison(&reports, png)?;
        eprintln!("plot: {}", png.display());
    }
    Ok(ExitCode::SUCCESS)
}
