//! `sigmaforge check <file|dir>... [--json]`: validate Sigma rule files against Sigma 2.1.
//!
//! Exit status: 0 when every rule is valid (warnings allowed), 1 when any file has an error,
//! 2 when the command itself cannot run (a path that does not exist, no rule files found).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use sigma_engine::check::{CheckedFile, check_across, check_text};
use sigma_engine::yaml::MAX_INPUT_BYTES;
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
}

pub fn run(args: Args) -> Result<ExitCode> {
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

    let options = CompileOptions::default();
    let mut checked: Vec<CheckedFile> = Vec::with_capacity(files.len());
    for file in &files {
        checked.push(check_file(file, &options));
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

/// Reads and checks one file; unreadable, oversized or non-UTF-8 files become error diagnostics.
fn check_file(path: &Path, options: &CompileOptions) -> CheckedFile {
    let origin = path.display().to_string();
    let fail = |code: &'static str, message: String| {
        let mut parsed = sigma_engine::ParsedFile::default();
        parsed.diagnostics.push(Diagnostic::error(code, &origin, None, message));
        CheckedFile { origin: origin.clone(), parsed }
    };
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_INPUT_BYTES as u64 => {
            return fail("input-too-large", format!("the file is {} bytes; rule files larger than {MAX_INPUT_BYTES} bytes are refused", m.len()));
        }
        Err(e) => return fail("unreadable-file", format!("cannot read the file: {e}")),
        Ok(_) => {}
    }
    match std::fs::read(path) {
        Err(e) => fail("unreadable-file", format!("cannot read the file: {e}")),
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => check_text(&text, &origin, options),
            Err(e) => fail("not-utf8", format!("the file is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())),
        },
    }
}
