//! `sigmaforge check <file|dir>... [--json] [--logsources <mapping.yml>]`: validate Sigma rule
//! files against Sigma 2.1 and against the logsource mapping `hunt` and the reward use.
//!
//! What counts as valid is the engine's (`sigma_engine::check`), shared with `hunt` and the
//! reward: a rule this command rejects is left out of a hunt with the same message.
//!
//! Exit status: 0 when every rule is valid (warnings allowed), 1 when any file has an error,
//! 2 when the command itself cannot run (a path that does not exist, no rule files found).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use sigma_engine::check::{CheckedFile, check_across, check_file, check_logsource};
use sigma_engine::logsource::LogsourceMap;
use sigma_engine::{CompileOptions, Diagnostic, Document};

#[derive(clap::Args)]
pub struct Args {
    /// Rule files, or directories searched recursively for *.yml / *.yaml files.
    #[arg(required = true, value_name = "FILE|DIR")]
    paths: Vec<PathBuf>,
    /// Print one JSON object per diagnostic (JSON Lines: file, line, column, severity, code,
    /// message) instead of text; the summary goes to stderr.
    #[arg(long)]
    json: bool,
    /// Logsource mapping file replacing the built-in configs/windows-logsources.yml: a rule whose
    /// product, category or service it does not map is an error (it could never match an event).
    #[arg(long)]
    logsources: Option<PathBuf>,
}

/// The mapping `hunt` would use with the same `--logsources`.
pub fn load_logsources(path: Option<&std::path::Path>) -> Result<LogsourceMap> {
    Ok(match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading logsource mapping {}", path.display()))?;
            LogsourceMap::parse(&text, &path.display().to_string())?
        }
        None => LogsourceMap::builtin()?,
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    // Small allocations only: huge pages would only add resident memory (see the function).
    sigmaforge_model::process::avoid_huge_pages();
    let mut files = Vec::new();
    for path in &args.paths {
        if path.is_dir() {
            files.extend(sigma_engine::rule_files(path)?);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            bail!("{}: no such file or directory", path.display());
        }
    }
    if files.is_empty() {
        bail!("no .yml or .yaml rule files found under {}", args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }

    let map = load_logsources(args.logsources.as_deref())?;
    let options = CompileOptions::default();
    let mut checked: Vec<CheckedFile> = Vec::with_capacity(files.len());
    for file in &files {
        let mut c = check_file(file, &options);
        // A rule whose logsource the mapping lacks can never match: not counted as valid.
        let mut unknown = Vec::new();
        c.parsed.documents.retain(|d| match d {
            Document::Rule(r) => {
                let found = check_logsource(r, &map);
                let keep = found.is_empty();
                unknown.extend(found);
                keep
            }
            _ => true,
        });
        c.parsed.diagnostics.extend(unknown);
        checked.push(c);
    }
    let across = check_across(&checked);

    let mut diagnostics: Vec<&Diagnostic> = checked.iter().flat_map(|c| &c.parsed.diagnostics).chain(&across).collect();
    // File order, then position: what an editor's problem list expects.
    let order: std::collections::HashMap<&str, usize> = checked.iter().enumerate().map(|(i, c)| (c.origin.as_str(), i)).collect();
    diagnostics.sort_by_key(|d| (order.get(d.origin.as_str()).copied().unwrap_or(usize::MAX), d.line, d.column));

    for d in &diagnostics {
        if args.json {
            println!("{}", d.to_json());
        } else {
            println!("{d}");
        }
    }

    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let bad_files: std::collections::HashSet<&str> = diagnostics.iter().filter(|d| d.is_error()).map(|d| d.origin.as_str()).collect();
    let (mut rules, mut correlations, mut filters) = (0, 0, 0);
    for c in &checked {
        for doc in &c.parsed.documents {
            match doc {
                Document::Rule(_) => rules += 1,
                Document::Correlation(_) => correlations += 1,
                Document::Filter(_) => filters += 1,
            }
        }
    }
    let summary = format!(
        "checked {} file{}: {} valid rule{}, {} correlation{}, {} filter{}; {} error{} in {} file{}, {} warning{}",
        files.len(),
        plural(files.len()),
        rules,
        plural(rules),
        correlations,
        plural(correlations),
        filters,
        plural(filters),
        errors,
        plural(errors),
        bad_files.len(),
        plural(bad_files.len()),
        warnings,
        plural(warnings),
    );
    if args.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
