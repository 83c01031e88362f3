//! `sigmaforge score`: score completions with a task plugin, one at a time or as a batch.
//!
//! ```text
//! sigmaforge score --plugins sigma.wasm (--task <id> | --reference <rule.yml>) --completion <file|-> [--json]
//! sigmaforge score --plugins sigma.wasm --batch <file.jsonl|-> [--json]
//! ```
//! Batch lines are `{"task": id, "completion": text}` or `{"reference": path, "completion": text}`;
//! one score object is printed per line, in order. A line that can't be read scores 0 with an
//! `error` naming the line, so the output stays aligned with the input. A completion that is not
//! UTF-8 text is a bad completion, not a failure: every component scores 0 with a detail saying
//! so (the plugin contract carries text only).

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
/// The completion is its text, or why it is not text.
type BatchItem = (String, Result<(TaskRef, Result<String, String>), String>);

pub fn run(args: Args) -> Result<ExitCode> {
    // Read the inputs before loading the plugin, so a typo fails fast.
    let items: Vec<BatchItem> = match &args.batch {
        Some(path) => read_batch(path)?,
        None => {
            let completion_path = args.completion.as_ref().context("--completion <file|-> is required (or use --batch)")?;
            let completion = completion_text(read_bytes(completion_path)?);
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

    let batch: Vec<(TaskRef, String)> = items
        .iter()
        .filter_map(|(_, r)| match r {
            Ok((task, Ok(text))) => Some((task.clone(), text.clone())),
            _ => None,
        })
        .collect();
    let mut scored = plugin.score_batch(&batch).into_iter();
    let mut failures = 0;
    for (label, item) in &items {
        let result = match item {
            Ok((_, Ok(_))) => scored.next().expect("one score per valid input"),
            Ok((_, Err(why))) => ScoreResult::from_components(
                plugin
                    .components()
                    .iter()
                    .map(|(name, weight)| ComponentScore { name: name.clone(), value: 0.0, weight: *weight, detail: why.clone() })
                    .collect(),
            ),
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
    let bytes = read_bytes(path)?;
    let base = if path == Path::new("-") { PathBuf::from(".") } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    let mut items = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let lineno = n + 1;
        // A line that is not UTF-8 costs only itself.
        let Ok(line) = std::str::from_utf8(line) else {
            items.push((format!("line {lineno}"), Err(format!("batch line {lineno}: not UTF-8 text"))));
            continue;
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Result<BatchLine, _> = serde_json::from_str(line);
        let item = match parsed {
            Err(e) => (format!("line {lineno}"), Err(format!("batch line {lineno}: not a {{\"task\"|\"reference\", \"completion\"}} object: {e}"))),
            Ok(BatchLine { task: Some(id), reference: None, completion }) => (id.clone(), Ok((TaskRef::Id(id), Ok(completion)))),
            Ok(BatchLine { task: None, reference: Some(r), completion }) => match reference_text(&r, &base) {
                Ok((label, text)) => (label, Ok((TaskRef::Reference(text), Ok(completion)))),
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

/// The bytes of a file, or of stdin for `-`.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().lock().read_to_end(&mut bytes).context("reading stdin")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("reading input {}", path.display()))
}

/// A completion's text, or the detail every component gets when it is not UTF-8.
fn completion_text(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        format!("the completion is not UTF-8 text (invalid byte at offset {}); it was not parsed and scores 0", e.utf8_error().valid_up_to())
    })
}
