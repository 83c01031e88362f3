//! `sigmaforge hunt --rules <file|dir>... --events <file|dir>... [--json|--csv] [--full]`: run
//! Sigma rules over Windows event logs (EVTX, evtx_dump JSON / JSON Lines) and report every
//! (rule, event) match.
//!
//! The work is the engine's (`sigma_engine::{check, corpus, hunt}`, the code the reward runs);
//! this command schedules it on a thread pool (event files, then rules, in parallel), draws a
//! progress bar on a terminal, and hands the results to [`super::hunt_report`] to format. Rules
//! that fail to load (as `check` judges them) or cannot run are reported on stderr and the hunt
//! goes on.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;
use sigma_engine::cache::{CacheStatus, CorpusLoader};
use sigma_engine::check::check_file;
use sigma_engine::corpus::{ChannelFilter, Corpus, LoadedFile, SourceFile, collect_event_files, load_event_file_if};
use sigma_engine::hunt::{Hunter, Passes, RuleSet};
use sigma_engine::{CompileOptions, RegexMemo};

use super::hunt_report::{Format, Report, Selection, Summary};

#[derive(clap::Args)]
pub struct Args {
    /// Sigma rule files or directories (searched recursively for .yml/.yaml).
    #[arg(long, required = true, num_args = 1..)]
    rules: Vec<PathBuf>,
    /// Event files (.evtx, .json, .jsonl) or directories (searched recursively).
    #[arg(long, required = true, num_args = 1..)]
    events: Vec<PathBuf>,
    /// Print one JSON object per (rule, event) match (JSON Lines) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print a CSV timeline (time, rule, level, channel, event id, computer, the fields the rule's
    /// detection reads), sorted by time, for a spreadsheet.
    #[arg(long)]
    csv: bool,
    /// Show each matched event: with --json an `event` object (System fields and event data as
    /// the rule sees them), in the table the fields the rule's detection reads.
    #[arg(long)]
    full: bool,
    /// Report only matches of rules with these levels (repeat or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = ["informational", "low", "medium", "high", "critical"])]
    level: Vec<String>,
    /// Report only matches of rules with these statuses (repeat or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = ["stable", "test", "experimental", "deprecated", "unsupported"])]
    status: Vec<String>,
    /// Corpus cache file: loaded when it is up to date with the event files, else (re)written.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Logsource mapping file replacing the built-in configs/windows-logsources.yml.
    #[arg(long)]
    logsources: Option<PathBuf>,
    /// Worker threads (default: one per CPU core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print where the time went to stderr: each phase's wall time and the process's CPU time
    /// (user + system, all threads) spent in it.
    #[arg(long)]
    timings: bool,
}

/// From this many rules on, the literal index pays for its pass over all events.
const MIN_RULES_FOR_INDEX: usize = 16;
/// Events per parallel scan task.
const SCAN_CHUNK: u32 = 2048;

pub fn run(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    // Small allocations only: huge pages would only add resident memory (see the function).
    sigmaforge_model::process::avoid_huge_pages();
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("starting the thread pool")?;
    }
    let mut phases = Phases::start(args.timings);
    let map = super::check::load_logsources(args.logsources.as_deref())?;

    // One memo of user regexes for `check`'s validation compile and the per-variant compiles.
    let regexes = RegexMemo::default();
    let rules = load_rules(&args.rules, &regexes)?;
    for error in &rules.errors {
        eprintln!("{error}");
    }
    phases.mark("reading and checking rules");

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
    // EVTX files of channels no rule reads are not parsed at all, and in the files that are,
    // records of (Channel, EventID) buckets no rule reads are dropped after their System part;
    // the loader applies this only without a cache (a cache must hold every event, so it is
    // written from all files).
    let buckets = map.buckets_of(rules.rules.iter().map(|r| &r.rule.logsource));
    let filter = buckets.and_then(ChannelFilter::for_buckets);
    let (corpus, unread, skipped) = load_corpus(&sources, args.cache.as_deref(), filter.as_ref())?;
    let load_time = loading.elapsed();
    report_damaged_files(&corpus, args.json);
    phases.mark("loading events");

    // The reward's options: placeholders (`|expand` with `%name%`) have no configured values in a
    // hunt, so they match nothing and the few rules that use them still run their other selections.
    let hunter = Hunter::new(&corpus, &map, CompileOptions { regexes: Some(regexes), ..CompileOptions::for_events() });
    let bar = progress(rules.rules.len() as u64, "rules");
    let prepared: Vec<_> = rules.rules.par_iter().map(|r| hunter.prepare(&r.rule)).collect();
    phases.mark("compiling rules per logsource");
    let matches: Vec<Vec<u32>> = if prepared.len() >= MIN_RULES_FOR_INDEX {
        // Many rules: one literal pass over the events finds, per rule, the few events worth
        // testing (the pass costs about what a dozen rules cost without it).
        let index = hunter.index_in(prepared.iter().map(|p| p.as_ref().ok()), &|n, build| (0..n).into_par_iter().for_each(build));
        phases.mark("building the literal index");
        let n = corpus.len() as u32;
        let ranges: Vec<_> = (0..n).step_by(SCAN_CHUNK as usize).map(|start| start..(start + SCAN_CHUNK).min(n)).collect();
        let mut passes = Passes::default();
        for p in ranges.into_par_iter().map(|r| hunter.scan(&index, r)).collect::<Vec<_>>() {
            passes.append(p);
        }
        phases.mark("scanning events for literals");
        prepared
            .par_iter()
            .enumerate()
            .map(|(i, p)| {
                bar.inc(1);
                p.as_ref().map(|p| hunter.evaluate_indexed(p, &index, &passes, i)).unwrap_or_default()
            })
            .collect()
    } else {
        prepared
            .par_iter()
            .map(|p| {
                bar.inc(1);
                p.as_ref().map(|p| hunter.evaluate(p)).unwrap_or_default()
            })
            .collect()
    };
    bar.finish_and_clear();
    let outcome = hunter.finish(&rules, &prepared, matches);
    phases.mark("evaluating rules");
    for s in &outcome.skipped {
        eprintln!("skipped: {}: {}: {}", s.file, s.title, s.reason);
    }

    let format = if args.json {
        Format::Json
    } else if args.csv {
        Format::Csv
    } else {
        Format::Table
    };
    let selection = Selection { levels: args.level.clone(), statuses: args.status.clone() };
    let report = Report { rules: &rules, prepared: &prepared, outcome: &outcome, hunter: &hunter, selection: &selection, full: args.full };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let written = report.write(&mut out, format);
    let total = match written.and_then(|n| out.flush().map(|_| n)) {
        Ok(n) => n,
        // `sigmaforge hunt … | head` closes the pipe early; that is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e).context("writing results"),
    };
    drop(out);
    phases.mark("writing results");

    let summary = Summary {
        rules: &rules,
        outcome: &outcome,
        corpus: &corpus,
        files: sources.len(),
        unread,
        skipped,
        matches: total,
        load_time,
        total_time: started.elapsed(),
    };
    if args.json || args.csv {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    phases.report();
    // The process ends here: freeing millions of event values one by one would cost a fifth of
    // a single-rule hunt's time, and the OS takes the memory back at once.
    std::mem::forget(hunter);
    std::mem::forget((prepared, outcome, corpus, rules));
    Ok(ExitCode::SUCCESS)
}

/// Every rule file under `roots`, parsed in parallel, added in sorted path order.
fn load_rules(roots: &[PathBuf], regexes: &RegexMemo) -> Result<RuleSet> {
    let mut files = Vec::new();
    for root in roots {
        let meta = std::fs::metadata(root).with_context(|| format!("reading rules from {}", root.display()))?;
        if meta.is_file() {
            files.push(root.clone());
        } else {
            files.extend(sigma_engine::rule_files(root).with_context(|| format!("reading rules from {}", root.display()))?);
        }
    }
    // `check`'s own reading and validation, so a rule `check` rejects stays out of the hunt.
    let options = CompileOptions { regexes: Some(regexes.clone()), ..CompileOptions::default() };
    let checked: Vec<_> = files.par_iter().map(|f| check_file(f, &options)).collect();
    Ok(RuleSet::from_checked(checked))
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
/// Also says how many files `filter` left unread and how many records it left out.
fn load_corpus(sources: &[SourceFile], cache: Option<&Path>, filter: Option<&ChannelFilter>) -> Result<(Corpus, usize, u64)> {
    let loader = CorpusLoader::new(sources).cache(cache).write_back(true).filter(filter).parser(&parse_in_parallel);
    let loaded = loader
        .load(&mut |status| {
            if let (CacheStatus::Rejected(e), Some(path)) = (status, cache) {
                eprintln!("note: cache {}: {e}; parsing the event files again", path.display());
            }
        })
        .context("reading event file metadata")?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    if let (Some(e), Some(path)) = (&loaded.write_error, cache) {
        eprintln!("warning: could not write the cache {}: {e}", path.display());
    }
    Ok((loaded.corpus, loaded.unread, loaded.skipped))
}

/// The loader's parser for the CLI: files in parallel, with a progress bar on a terminal.
fn parse_in_parallel(sources: &[SourceFile], filter: Option<&ChannelFilter>) -> Vec<Option<LoadedFile>> {
    let bar = progress(sources.len() as u64, "event files");
    // Largest files first, one file a task: the few multi-megabyte logs start at once instead
    // of keeping one thread busy after the others ran out of files.
    let size = |s: &SourceFile| std::fs::metadata(&s.path).map_or(0, |m| m.len());
    let mut order: Vec<(u64, usize)> = sources.iter().enumerate().map(|(i, s)| (size(s), i)).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let mut parsed: Vec<(usize, Option<LoadedFile>)> = order
        .par_iter()
        .with_max_len(1)
        .map(|&(_, i)| {
            let l = load_event_file_if(&sources[i], filter);
            bar.inc(1);
            (i, l)
        })
        .collect();
    bar.finish_and_clear();
    // Back in file order: the corpus is built in that order.
    parsed.sort_unstable_by_key(|(i, _)| *i);
    parsed.into_iter().map(|(_, l)| l).collect()
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

/// `--timings`: the wall and CPU time of each phase, printed at the end.
struct Phases {
    enabled: bool,
    last: (Instant, Duration),
    done: Vec<(&'static str, Duration, Duration)>,
}

impl Phases {
    fn start(enabled: bool) -> Self {
        Phases { enabled, last: (Instant::now(), process_cpu_time()), done: Vec::new() }
    }

    /// Ends the phase that ran since the last mark.
    fn mark(&mut self, phase: &'static str) {
        if !self.enabled {
            return;
        }
        let now = (Instant::now(), process_cpu_time());
        self.done.push((phase, now.0 - self.last.0, now.1.saturating_sub(self.last.1)));
        self.last = now;
    }

    fn report(&self) {
        if !self.enabled {
            return;
        }
        let (wall, cpu) = self.done.iter().fold((Duration::ZERO, Duration::ZERO), |(w, c), p| (w + p.1, c + p.2));
        eprintln!("timings (wall, CPU of all threads):");
        for (phase, w, c) in self.done.iter().chain(std::iter::once(&("total", wall, cpu))) {
            eprintln!("  {phase:<30} {:>8.1} ms {:>8.1} ms", w.as_secs_f64() * 1e3, c.as_secs_f64() * 1e3);
        }
    }
}

/// User + system CPU time of the whole process so far (zero where the OS does not say).
fn process_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
            return tv(usage.ru_utime) + tv(usage.ru_stime);
        }
    }
    Duration::ZERO
}
