//! Engine benchmarks over the project corpus (`../shared/data/evtx`, 590 files, 25,062 events)
//! and the SigmaHQ Windows rules. Run: `cargo bench -p sigma-engine --bench engine`.
//!
//! A plain timing harness (medians of repeated runs) rather than criterion: the figures needed
//! are a handful of medians, and criterion's build cost is large on the project's 2-core VM.
//! Everything here is single-threaded; the CLI's parallel full hunt is timed end to end with
//! `/usr/bin/time -v sigmaforge hunt ...` (see BENCHMARKS.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sigma_engine::CompileOptions;
use sigma_engine::cache::SourceStamp;
use sigma_engine::corpus::{Corpus, collect_event_files};
use sigma_engine::hunt::{Hunter, RuleSet};
use sigma_engine::logsource::LogsourceMap;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut samples = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f();
        samples.push(start.elapsed());
        last = Some(out);
    }
    (median(samples), last.expect("runs > 0"))
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported (the run is short).
    let data = sigmaforge_data::for_tests();
    let sources = collect_event_files(&data.join("evtx")).unwrap();

    let (parse, (corpus, warnings)) = time(3, || Corpus::load(&sources));
    // The corpus has one record without an EventRecordID (see ../shared/data/evtx/SOURCES.md).
    for w in &warnings {
        println!("warning: {w}");
    }
    println!("corpus: {} events from {} files", corpus.len(), sources.len());
    println!("EVTX parse (serial, median of 3):          {:>10.2?}", parse);

    let stamps: Vec<SourceStamp> = sources.iter().map(|s| SourceStamp::of(s).unwrap()).collect();
    let cache = std::env::temp_dir().join(format!("sigmaforge-bench-{}.cache", std::process::id()));
    let (write, ()) = time(3, || corpus.write_cache(&cache, &stamps).unwrap());
    let size = std::fs::metadata(&cache).unwrap().len();
    let (read, back) = time(5, || Corpus::read_cache(&cache, Some(&stamps)).unwrap());
    assert_eq!(back.len(), corpus.len());
    std::fs::remove_file(&cache).ok();
    println!("cache write (median of 3):                  {:>10.2?}  ({:.1} MB)", write, size as f64 / 1e6);
    println!(
        "cache load incl. freshness check (median of 5): {:>6.2?}  ({:.1}x faster than parsing)",
        read,
        parse.as_secs_f64() / read.as_secs_f64()
    );

    let map = LogsourceMap::builtin().unwrap();
    let hunter = Hunter::new(&corpus, &map, CompileOptions::default());
    let sigma = data.join("sigma");
    let single = [
        "rules/windows/process_creation/proc_creation_win_whoami_execution_from_high_priv_process.yml",
        "rules/windows/process_creation/proc_creation_win_powershell_base64_encoded_obfusc.yml",
        "rules/windows/registry/registry_set/registry_set_asep_reg_keys_modification_currentversion.yml",
        "rules/windows/builtin/security/win_security_susp_lsass_dump_generic.yml",
        "rules/windows/builtin/win_alert_mimikatz_keywords.yml",
    ];
    println!("\none rule over the loaded corpus (median of 201 runs):");
    println!("{:<90} {:>9} {:>12} {:>12}", "rule", "matches", "evaluate", "compile+eval");
    for rel in single {
        let path = sigma.join(rel);
        let Ok(text) = std::fs::read_to_string(&path) else {
            println!("{rel:<90} (missing)");
            continue;
        };
        let mut set = RuleSet::default();
        set.add_file(&text, rel);
        let rule = &set.rules[0].rule;
        let prepared = hunter.prepare(rule).unwrap();
        let (eval, hits) = time(201, || hunter.evaluate(&prepared));
        let (both, _) = time(201, || hunter.evaluate(&hunter.prepare(rule).unwrap()));
        println!("{rel:<90} {:>9} {:>12.2?} {:>12.2?}", hits.len(), eval, both);
    }

    // The SigmaHQ rule folders (meta/ holds converter configs, not rules), in path order.
    let files: Vec<PathBuf> =
        ["rules", "rules-emerging-threats", "rules-threat-hunting"].iter().flat_map(|d| sigma_engine::rule_files(&sigma.join(d)).unwrap()).collect();
    let (parse_rules, set) = time(1, || {
        let mut set = RuleSet::default();
        for f in &files {
            set.add_file(&std::fs::read_to_string(f).unwrap(), &f.display().to_string());
        }
        set
    });
    let options = CompileOptions { unknown_placeholder: sigma_engine::PlaceholderPolicy::MatchNothing, ..CompileOptions::default() };
    let hunter = Hunter::new(&corpus, &map, options);
    let (compile, prepared) = time(1, || set.rules.iter().map(|r| hunter.prepare(&r.rule)).collect::<Vec<_>>());
    let ok: Vec<_> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let (eval, total) = time(3, || ok.iter().map(|p| hunter.evaluate(p).len()).sum::<usize>());
    println!("\nall {} SigmaHQ Windows rules ({} run), serial:", set.rules.len(), ok.len());
    println!("  parse rule files        {:>10.2?}", parse_rules);
    println!("  compile                 {:>10.2?}", compile);
    println!("  evaluate (median of 3)  {:>10.2?}  ({} matches)", eval, total);
    // The same rules through the literal index (what `hunt` does with many rules): build it,
    // pass every event through it once, then run each rule on the events it passed.
    let (build, index) = time(3, || hunter.index(ok.iter().map(|p| Some(*p))));
    let (scan, passes) = time(3, || hunter.scan(&index, 0..corpus.len() as u32));
    let (indexed, indexed_total) =
        time(3, || ok.iter().enumerate().map(|(i, p)| hunter.evaluate_indexed(p, &index, &passes, i).len()).sum::<usize>());
    assert_eq!(indexed_total, total, "the index must not change the matches");
    println!("  literal index: build {build:.2?}, scan {scan:.2?}, evaluate {indexed:.2?} (medians of 3; {indexed_total} matches)");
}
