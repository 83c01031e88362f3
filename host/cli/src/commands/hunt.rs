//! `sigmaforge hunt --rules <file|dir>... --events <file|dir>... [--json]`: run Sigma rules over
//! Windows event logs (EVTX, evtx_dump JSON / JSON Lines) and report every (rule, event) match.
//!
//! The work is the engine's (`sigma_engine::{corpus, hunt}`); this command schedules it on a
//! thread pool (event files, then rules, in parallel), draws a progress bar on a terminal and
//! formats the results. Rules that fail to load or cannot run are reported on stderr and the hunt
//! goes on.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;
use sigma_engine::cache::{CacheError, SourceStamp};
use sigma_engine::corpus::{Corpus, SourceFile, collect_event_files, load_event_file};
use sigma_engine::hunt::{HuntOutcome, Hunter, RuleSet};
use sigma_engine::logsource::LogsourceMap;
use sigma_engine::{CompileOptions, PlaceholderPolicy};

#[derive(clap::Args)]
pub struct Args {
    /// Sigma rule files or directories (searched recursively for .yml/.yaml).
    #[arg(long, required = true, num_args = 1..)]
    rules: Vec<PathBuf>,
    /// Event files (.evtx, .json, .jsonl) or directories (searched recursively).
    #[arg(long, required = true, num_args = 1..)]
    events: Vec<PathBuf>,
    /// Print one JSON object per (rule, event) match (JSON Lines) instead of a table.
    #[arg(long)]
    json: bool,
    /// Corpus cache file: loaded when it is up to date with the event files, else (re)written.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Logsource mapping file replacing the built-in configs/windows-logsources.yml.
    #[arg(long)]
    logsources: Option<PathBuf>,
    /// Worker threads (default: one per CPU core).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("starting the thread pool")?;
    }
    let map = match &args.logsources {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading logsource mapping {}", path.display()))?;
            LogsourceMap::parse(&text, &path.display().to_string())?
        }
        None => LogsourceMap::builtin()?,
    };

    let rules = load_rules(&args.rules)?;
    for error in &rules.errors {
        eprintln!("{error}");
    }

    let mut sources = Vec::new();
    for root in &args.events {
        let found = collect_event_files(root).with_context(|| format!("reading events from {}", root.display()))?;
        if found.is_empty() {
            eprintln!("warning: {}: no .evtx, .json or .jsonl files found", root.display());
        }
        sources.extend(found);
    }
    if sources.is_empty() {
        bail!("no event files found under {}", args.events.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let loading = Instant::now();
    let corpus = load_corpus(&sources, args.cache.as_deref())?;
    let load_time = loading.elapsed();
    report_damaged_files(&corpus, args.json);

    // Placeholders (`|expand` with `%name%`) have no configured values in a hunt: they match
    // nothing, so the few rules that use them still run their other selections.
    let options = CompileOptions { unknown_placeholder: PlaceholderPolicy::MatchNothing, ..CompileOptions::default() };
    let hunter = Hunter::new(&corpus, &map, options);
    let bar = progress(rules.rules.len() as u64, "rules");
    let evaluated: Vec<_> = rules
        .rules
        .par_iter()
        .map(|r| {
            let prepared = hunter.prepare(&r.rule);
            let matches = prepared.as_ref().map(|p| hunter.evaluate(p)).unwrap_or_default();
            bar.inc(1);
            (prepared, matches)
        })
        .collect();
    bar.finish_and_clear();
    let (prepared, matches): (Vec<_>, Vec<_>) = evaluated.into_iter().unzip();
    let outcome = hunter.finish(&rules, prepared, matches);
    for s in &outcome.skipped {
        eprintln!("skipped: {}: {}: {}", s.file, s.title, s.reason);
    }

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let written = if args.json { write_json(&mut out, &rules, &outcome, &corpus) } else { write_table(&mut out, &rules, &outcome, &corpus) };
    let total = match written.and_then(|n| out.flush().map(|_| n)) {
        Ok(n) => n,
        // `sigmaforge hunt … | head` closes the pipe early; that is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e).context("writing results"),
    };
    drop(out);

    let summary =
        Summary { rules: &rules, outcome: &outcome, corpus: &corpus, files: sources.len(), matches: total, load_time, total_time: started.elapsed() };
    if args.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Every rule file under `roots`, parsed in parallel, added in sorted path order.
fn load_rules(roots: &[PathBuf]) -> Result<RuleSet> {
    let mut files = Vec::new();
    for root in roots {
        let meta = std::fs::metadata(root).with_context(|| format!("reading rules from {}", root.display()))?;
        if meta.is_file() {
            files.push(root.clone());
        } else {
            files.extend(sigma_engine::rule_files(root).with_context(|| format!("reading rules from {}", root.display()))?);
        }
    }
    let parsed: Vec<_> = files
        .par_iter()
        .map(|f| {
            let name = f.display().to_string();
            let parsed = match std::fs::read_to_string(f) {
                Ok(text) => Ok(sigma_engine::parse_documents(&text, &name)),
                Err(e) => Err(format!("{name}: error: cannot read the rule file: {e}")),
            };
            (name, parsed)
        })
        .collect();
    let mut set = RuleSet::default();
    for (name, parsed) in parsed {
        match parsed {
            Ok(p) => set.add_parsed(p, &name),
            Err(e) => {
                set.failed_files += 1;
                set.errors.push(e);
            }
        }
    }
    set.apply_filters();
    Ok(set)
}

/// One stderr line per event file that did not load clean: what was recovered, lost and
/// dropped (as JSON with `--json`). A run from the cache reports the same, since the cache keeps
/// the reports.
fn report_damaged_files(corpus: &Corpus, json: bool) {
    for report in corpus.damaged_files() {
        if json {
            eprintln!("{}", json!({ "integrity": report }));
        } else {
            eprintln!("integrity: {}: {}", report.file, report.summary());
        }
    }
}

/// Loads the corpus from the cache when it is fresh, else parses the files (in parallel) and,
/// with a cache path, writes the cache for next time.
fn load_corpus(sources: &[SourceFile], cache: Option<&Path>) -> Result<Corpus> {
    let stamps = match cache {
        Some(_) => sources.iter().map(SourceStamp::of).collect::<std::io::Result<Vec<_>>>().context("reading event file metadata")?,
        None => Vec::new(),
    };
    if let Some(path) = cache {
        match Corpus::read_cache(path, Some(&stamps)) {
            Ok(corpus) => return Ok(corpus),
            Err(CacheError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("note: cache {}: {e}; parsing the event files again", path.display()),
        }
    }
    let bar = progress(sources.len() as u64, "event files");
    let loaded: Vec<_> = sources
        .par_iter()
        .map(|s| {
            let l = load_event_file(s);
            bar.inc(1);
            l
        })
        .collect();
    bar.finish_and_clear();
    let mut builder = Corpus::builder();
    for l in loaded {
        builder.add(l);
    }
    let (corpus, warnings) = builder.finish();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if let Some(path) = cache {
        match corpus.write_cache(path, &stamps) {
            Ok(()) => {}
            Err(e) => eprintln!("warning: could not write the cache {}: {e}", path.display()),
        }
    }
    Ok(corpus)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    // Hidden unless stderr is a terminal, so logs and pipes stay clean.
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what} ({{elapsed}})")).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// One reported match: a detection rule's or a correlation's.
struct Hit<'a> {
    rule_id: Option<&'a str>,
    file: &'a str,
    title: &'a str,
    level: Option<&'static str>,
    correlation: Option<&'static str>,
    event: u32,
}

fn hits<'a>(rules: &'a RuleSet, outcome: &'a HuntOutcome) -> impl Iterator<Item = Hit<'a>> {
    let detections = rules.rules.iter().zip(&outcome.rule_matches).flat_map(|(r, m)| {
        m.iter().map(move |&event| Hit {
            rule_id: r.rule.id.as_deref(),
            file: &r.file,
            title: &r.rule.title,
            level: r.rule.level.map(|l| l.as_str()),
            correlation: None,
            event,
        })
    });
    let correlations = rules.correlations.iter().zip(&outcome.correlation_matches).flat_map(|(c, m)| {
        m.iter().map(move |&event| Hit {
            rule_id: c.correlation.id.as_deref(),
            file: &c.file,
            title: &c.correlation.title,
            level: c.correlation.level.map(|l| l.as_str()),
            correlation: Some(c.correlation.kind.as_str()),
            event,
        })
    });
    detections.chain(correlations)
}

fn field_text<'c>(corpus: &'c Corpus, event: u32, name: &str) -> Option<&'c str> {
    corpus.event(event).values(corpus.field_key(name)).next().map(|v| v.text())
}

fn write_json(out: &mut impl Write, rules: &RuleSet, outcome: &HuntOutcome, corpus: &Corpus) -> std::io::Result<usize> {
    let mut n = 0;
    for hit in hits(rules, outcome) {
        let event = corpus.event(hit.event);
        let mut line = json!({
            "rule_id": hit.rule_id,
            "rule": hit.file,
            "title": hit.title,
            "level": hit.level,
            "file": corpus.file_name(event.file),
            "record_id": event.record_id,
            "event_id": field_text(corpus, hit.event, "EventID"),
            "channel": field_text(corpus, hit.event, "Channel"),
            "timestamp": field_text(corpus, hit.event, "TimeCreated_SystemTime"),
        });
        if let Some(kind) = hit.correlation {
            line["correlation"] = json!(kind);
        }
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    Ok(n)
}

fn write_table(out: &mut impl Write, rules: &RuleSet, outcome: &HuntOutcome, corpus: &Corpus) -> std::io::Result<usize> {
    let rows: Vec<[String; 5]> = hits(rules, outcome)
        .map(|hit| {
            let event = corpus.event(hit.event);
            let title = match hit.correlation {
                Some(kind) => format!("{} [{kind}]", hit.title),
                None => hit.title.to_string(),
            };
            [
                field_text(corpus, hit.event, "TimeCreated_SystemTime").unwrap_or("-").to_string(),
                hit.level.unwrap_or("-").to_string(),
                title,
                corpus.file_name(event.file).to_string(),
                event.record_id.to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        writeln!(out, "no matches")?;
        return Ok(0);
    }
    let header = ["timestamp", "level", "rule", "file", "record"];
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0).min(70)).collect();
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let cell: String = if cell.chars().count() > widths[c] {
                format!("{}…", cell.chars().take(widths[c] - 1).collect::<String>())
            } else {
                cell.to_string()
            };
            if c == 4 {
                text.push_str(&format!("{cell:>w$}", w = widths[c]));
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &header)?;
    line(out, &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>())?;
    for r in &rows {
        line(out, &r.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(rows.len())
}

struct Summary<'a> {
    rules: &'a RuleSet,
    outcome: &'a HuntOutcome,
    corpus: &'a Corpus,
    files: usize,
    matches: usize,
    load_time: Duration,
    total_time: Duration,
}

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let firing = self.outcome.rule_matches.iter().chain(&self.outcome.correlation_matches).filter(|m| !m.is_empty()).count();
        writeln!(f)?;
        writeln!(
            f,
            "rules:   {} loaded ({} detection, {} correlation, {} filters), {} files with errors, {} skipped",
            self.rules.loaded(),
            self.rules.rules.len(),
            self.rules.correlations.len(),
            self.rules.filters.len(),
            self.rules.failed_files,
            self.outcome.skipped.len()
        )?;
        write!(f, "events:  {} from {} files (loaded in {:.2?})", self.corpus.len(), self.files, self.load_time)?;
        let damaged = self.corpus.damaged_files();
        if !damaged.is_empty() {
            let total = |count: fn(&sigma_engine::corpus::FileIntegrity) -> u64| damaged.iter().map(count).sum::<u64>();
            write!(
                f,
                "; {} files not intact: {} records recovered, {} lost, {} duplicates dropped",
                damaged.len(),
                total(|i| i.recovered),
                total(|i| i.lost),
                total(|i| i.duplicates)
            )?;
        }
        writeln!(f)?;
        writeln!(f, "matches: {} from {firing} rules", self.matches)?;
        write!(f, "time:    {:.2?}", self.total_time)
    }
}
