//! `sigmaforge score`: score completions with a task plugin, one at a time or as a batch.
//!
//! ```text
//! sigmaforge score --plugins sigma.wasm (--task <id> | --reference <rule.yml>) --completion <file|-> [--json]
//! sigmaforge score --plugins sigma.wasm --batch <file.jsonl|-> [--json]
//! ```
//! Batch lines are `{"task": id, "completion": text}` or `{"reference": path, "completion": text}`;
//! one score object is printed per line, in order. A line that can't be read scores 0 with an
//! `error` naming the line, so the output stays aligned with the input.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sigmaforge_runtime::{ComponentScore, ScoreResult, TaskRef};

use super::plugin::PluginSource;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: PluginSource,
    /// Score against this task of the plugin.
    #[arg(long, conflicts_with = "reference")]
    task: Option<String>,
    /// Score against an ad-hoc task made from this reference file (for Sigma: a rule).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The completion: a file, or `-` for stdin.
    #[arg(long)]
    completion: Option<PathBuf>,
    /// JSON Lines of {"task"|"reference", "completion"}: a file, or `-` for stdin.
    #[arg(long, conflicts_with_all = ["task", "reference", "completion"])]
    batch: Option<PathBuf>,
    /// Print {"task", "total", "components": [{"name","value","weight","detail"}], "error"}.
    #[arg(long)]
    json: bool,
}

/// One printed score.
#[derive(Serialize)]
struct Output<'a> {
    task: &'a str,
    total: f64,
    components: &'a [ComponentScore],
    error: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    task: Option<String>,
    reference: Option<String>,
    completion: String,
}

/// One input to score: its label and (task or reference, completion), or why it is unreadable.
type BatchItem = (String, Result<(TaskRef, String), String>);

pub fn run(args: Args) -> Result<ExitCode> {
    // Read the inputs before loading the plugin, so a typo fails fast.
    let items: Vec<BatchItem> = match &args.batch {
        Some(path) => read_batch(path)?,
        None => {
            let completion_path = args.completion.as_ref().context("--completion <file|-> is required (or use --batch)")?;
            let completion = read_input(completion_path)?;
            let (label, task) = match (&args.task, &args.reference) {
                (Some(id), None) => (id.clone(), TaskRef::Id(id.clone())),
                (None, Some(path)) => (path.display().to_string(), TaskRef::Reference(read_text(path, "reference")?)),
                _ => bail!("give either --task <id> or --reference <file>"),
            };
            vec![(label, Ok((task, completion)))]
        }
    };
    let set = args.source.load()?;
    let plugin = PluginSource::task_plugin(&set, &args.source.plugins)?;

    let batch: Vec<(TaskRef, String)> = items.iter().filter_map(|(_, r)| r.as_ref().ok().cloned()).collect();
    let mut scored = plugin.score_batch(&batch).into_iter();
    let mut failures = 0;
    for (label, item) in &items {
        let result = match item {
            Ok(_) => scored.next().expect("one score per valid input"),
            Err(e) => ScoreResult::failed(e.clone()),
        };
        if result.error.is_some() {
            failures += 1;
        }
        print_score(label, &result, args.json)?;
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_score(label: &str, r: &ScoreResult, json: bool) -> Result<()> {
    if json {
        let out = Output { task: label, total: r.total, components: &r.components, error: r.error.as_deref() };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!("{label}: total {:.3}", r.total);
    for c in &r.components {
        println!("  {:<20} {:.3} x {:<5} {}", c.name, c.value, c.weight, c.detail);
    }
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
    Ok(())
}

/// Reads the batch; each line becomes (label, Ok(input)) or (label, Err(why)).
fn read_batch(path: &Path) -> Result<Vec<BatchItem>> {
    let text = read_input(path)?;
    let base = if path == Path::new("-") { PathBuf::from(".") } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = n + 1;
        let parsed: Result<BatchLine, _> = serde_json::from_str(line);
        let item = match parsed {
            Err(e) => (format!("line {lineno}"), Err(format!("batch line {lineno}: not a {{\"task\"|\"reference\", \"completion\"}} object: {e}"))),
            Ok(BatchLine { task: Some(id), reference: None, completion }) => (id.clone(), Ok((TaskRef::Id(id), completion))),
            Ok(BatchLine { task: None, reference: Some(r), completion }) => match reference_text(&r, &base) {
                Ok((label, text)) => (label, Ok((TaskRef::Reference(text), completion))),
                Err(e) => (r.clone(), Err(format!("batch line {lineno}: {e:#}"))),
            },
            Ok(_) => (format!("line {lineno}"), Err(format!("batch line {lineno}: give exactly one of \"task\" and \"reference\""))),
        };
        items.push(item);
    }
    Ok(items)
}

/// A batch `reference` is a path to a file (relative to the batch file); a value spanning
/// several lines is taken as the reference text itself.
fn reference_text(value: &str, base: &Path) -> Result<(String, String)> {
    if value.contains('\n') {
        return Ok(("<inline reference>".to_string(), value.to_string()));
    }
    let path = if Path::new(value).is_absolute() { PathBuf::from(value) } else { base.join(value) };
    Ok((value.to_string(), read_text(&path, "reference")?))
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// A file, or stdin for `-`.
fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().lock().read_to_string(&mut s).context("reading stdin")?;
        return Ok(s);
    }
    read_text(path, "input")
}
