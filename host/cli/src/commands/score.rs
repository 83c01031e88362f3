//! `sigmaforge score`: score completions with a task plugin, one at a time or as a batch.
//!
//! ```text
//! sigmaforge score --plugins sigma.wasm (--task <id> | --reference <rule.yml>) --completion <file|-> [--json]
//! sigmaforge score --plugins sigma.wasm --batch <file.jsonl|-> [--json]
//! ```
//! Batch lines are score requests as `POST /v1/score` takes them ([`sigmaforge_runtime::wire`]):
//! `{"task": id | "reference": text | "reference_file": path, "completion": text, "id"?: any}`,
//! with `reference_file` relative to the batch file. For batch files written before
//! `reference_file` existed, a `reference` with no newline in it is still read as a path
//! (deprecated, with a warning on stderr). One score object is printed per line, in order. A
//! line that can't be read scores 0 with an `error` naming the line, so the output stays aligned
//! with the input. A completion that is not UTF-8 text is a bad completion, not a failure: every
//! component scores 0 with a detail saying so (the plugin contract carries text only).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sigmaforge_runtime::{ComponentScore, ReferenceFiles, ScoreAnswer, ScoreRequest, ScoreResult, Target, TaskRef};

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
    /// JSON Lines of {"task"|"reference"|"reference_file", "completion", "id"?} (docs/serve.md): a file, or `-` for stdin.
    #[arg(long, conflicts_with_all = ["task", "reference", "completion"])]
    batch: Option<PathBuf>,
    /// Print {"task", "total", "components": [{"name","value","weight","detail"}], "error"}.
    #[arg(long)]
    json: bool,
}

/// One input to score, in input order.
struct Input {
    /// The answer's `task`: the task id, the reference's label, or `line N` for a line that
    /// could not be read.
    label: String,
    /// The request's `id`, echoed back.
    id: Option<Value>,
    /// What to score and the completion (its text, or why it is not text), or why the input
    /// is unreadable.
    work: Result<(TaskRef, Result<String, String>), String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    // Read the inputs before loading the plugin, so a typo fails fast.
    let inputs: Vec<Input> = match &args.batch {
        Some(path) => read_batch(path)?,
        None => {
            let completion_path = args.completion.as_ref().context("--completion <file|-> is required (or use --batch)")?;
            let completion = completion_text(read_bytes(completion_path)?);
            let (label, task) = match (&args.task, &args.reference) {
                (Some(id), None) => (id.clone(), TaskRef::Id(id.clone())),
                (None, Some(path)) => (path.display().to_string(), TaskRef::Reference(read_text(path, "reference")?)),
                _ => bail!("give either --task <id> or --reference <file>"),
            };
            vec![Input { label, id: None, work: Ok((task, completion)) }]
        }
    };
    let set = args.source.load()?;
    let plugin = PluginSource::task_plugin(&set, &args.source.plugins)?;

    let batch: Vec<(TaskRef, String)> = inputs
        .iter()
        .filter_map(|input| match &input.work {
            Ok((task, Ok(text))) => Some((task.clone(), text.clone())),
            _ => None,
        })
        .collect();
    let mut scored = plugin.score_batch(&batch).into_iter();
    let mut failures = 0;
    for input in &inputs {
        let result = match &input.work {
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
        print_score(input, &result, args.json)?;
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_score(input: &Input, r: &ScoreResult, json: bool) -> Result<()> {
    if json {
        let answer = ScoreAnswer { id: input.id.as_ref(), task: &input.label, result: r };
        println!("{}", serde_json::to_string(&answer)?);
        return Ok(());
    }
    println!("{}: total {:.3}", input.label, r.total);
    for c in &r.components {
        println!("  {:<20} {:.3} x {:<5} {}", c.name, c.value, c.weight, c.detail);
    }
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
    Ok(())
}

/// Reads the batch: one [`Input`] per non-blank line; a line that cannot be read becomes an
/// input that scores 0 with an error naming the line.
fn read_batch(path: &Path) -> Result<Vec<Input>> {
    let bytes = read_bytes(path)?;
    let base = if path == Path::new("-") { PathBuf::from(".") } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    let mut inputs = Vec::new();
    let mut path_references = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let lineno = n + 1;
        let unreadable = |why: String| Input { label: format!("line {lineno}"), id: None, work: Err(format!("batch line {lineno}: {why}")) };
        // A line that is not UTF-8 costs only itself.
        let Ok(line) = std::str::from_utf8(line) else {
            inputs.push(unreadable("not UTF-8 text".to_string()));
            continue;
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let request = serde_json::from_str::<Value>(line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| ScoreRequest::from_value(v, ReferenceFiles::Allowed));
        let request = match request {
            Ok(r) => r,
            Err(why) => {
                inputs.push(unreadable(why));
                continue;
            }
        };
        let file = match &request.target {
            Target::ReferenceFile(file) => Some(file.as_str()),
            Target::Reference(text) if !text.contains('\n') => {
                path_references.push(lineno);
                Some(text.as_str())
            }
            _ => None,
        };
        let label = file.unwrap_or(request.target.label()).to_string();
        let task = match file {
            Some(file) => read_reference_file(file, &base).map(TaskRef::Reference).map_err(|e| format!("batch line {lineno}: {e:#}")),
            None => Ok(request.target.task_ref().expect("not a reference file")),
        };
        inputs.push(Input { label, id: request.id, work: task.map(|t| (t, Ok(request.completion))) });
    }
    if let Some(first) = path_references.first() {
        let more = match path_references.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        eprintln!(
            "warning: batch line {first}{more}: a one-line \"reference\" is read as a file path; this is deprecated, \
             use \"reference_file\" for a path (\"reference\" is the reference text, as in POST /v1/score)"
        );
    }
    Ok(inputs)
}

/// A `reference_file`, relative to the batch file's folder.
fn read_reference_file(value: &str, base: &Path) -> Result<String> {
    let path = if Path::new(value).is_absolute() { PathBuf::from(value) } else { base.join(value) };
    read_text(&path, "reference")
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
