//! `sigmaforge hunt` as a user runs it: the JSON Lines contract (`rule_id`, `rule`, `title`,
//! `file`, `record_id`), file naming relative to `--events`, the table and summary, rules that
//! fail to load, corrupt event files, and the corpus cache.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn hunt(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["hunt"];
    all.extend_from_slice(args);
    sigmaforge_e2e::run_sigmaforge(&all, None)
}

const RULE_ID: &str = "8a2f4b1c-3d5e-4f7a-9b2c-1e4f6d8a9c2b";

fn fixture() -> (PathBuf, PathBuf) {
    let data = sigmaforge_data::for_tests();
    let rule = data.join("sigma/rules-threat-hunting/windows/image_load/image_load_win_werfaultsecure_dbgcore_dbghelp_load.yml");
    let dir =
        data.join("sigma-regression/regression_data/rules-threat-hunting/windows/image_load/image_load_win_werfaultsecure_dbgcore_dbghelp_load");
    (rule, dir)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sf-hunt-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn json_lines_name_the_rule_and_the_event() {
    let (rule, dir) = fixture();
    let evtx = dir.join(format!("{RULE_ID}.evtx"));
    let (code, out, err) = hunt(&["--json", "--rules", rule.to_str().unwrap(), "--events", evtx.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines = json_lines(&out);
    assert!(!lines.is_empty(), "no match; stderr: {err}");
    for l in &lines {
        assert_eq!(l["rule_id"], RULE_ID);
        assert_eq!(l["rule"], rule.to_str().unwrap());
        assert_eq!(l["title"], "WerFaultSecure Loading DbgCore or DbgHelp - EDR-Freeze");
        assert_eq!(l["file"], format!("{RULE_ID}.evtx"), "a file argument is reported by its bare name");
        assert!(l["record_id"].is_u64(), "{l}");
    }
    assert!(lines.iter().any(|l| l["record_id"] == 571146), "{out}");
    assert!(err.contains("matches:"), "the summary goes to stderr with --json: {err}");
}

#[test]
fn directories_name_files_relative_to_the_events_argument() {
    let (rule, dir) = fixture();
    let (code, out, err) = hunt(&["--json", "--rules", rule.parent().unwrap().to_str().unwrap(), "--events", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = json_lines(&out).into_iter().filter(|l| l["rule_id"] == RULE_ID).collect();
    let files: std::collections::BTreeSet<String> = lines.iter().map(|l| l["file"].as_str().unwrap().to_string()).collect();
    // The .evtx file and its evtx_dump JSON rendering give the same events.
    assert_eq!(files.into_iter().collect::<Vec<_>>(), [format!("{RULE_ID}.evtx"), format!("{RULE_ID}.json")]);
    assert_eq!(lines.len() % 2, 0);
}

#[test]
fn broken_rules_and_corrupt_event_files_are_reported_and_the_hunt_goes_on() {
    let (rule, dir) = fixture();
    let work = temp_dir("broken");
    std::fs::copy(&rule, work.join("good.yml")).unwrap();
    std::fs::write(work.join("broken.yml"), "title: Broken\nlogsource: [\n").unwrap();
    let events = temp_dir("events");
    std::fs::copy(dir.join(format!("{RULE_ID}.evtx")), events.join("good.evtx")).unwrap();
    std::fs::write(events.join("corrupt.evtx"), b"ElfFile\0 this is not really an event log").unwrap();
    std::fs::write(events.join("empty.evtx"), b"").unwrap();
    let (code, out, err) = hunt(&["--rules", work.to_str().unwrap(), "--events", events.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("broken.yml"), "the broken rule is named on stderr: {err}");
    assert!(err.contains("corrupt.evtx") && err.contains("empty.evtx"), "{err}");
    assert!(out.contains("WerFaultSecure Loading DbgCore"), "the table lists the good rule's matches: {out}");
    assert!(out.contains("good.evtx"));
    assert!(out.contains("rules:") && out.contains("1 files with errors") && out.contains("matches:"), "{out}");
    std::fs::remove_dir_all(&work).ok();
    std::fs::remove_dir_all(&events).ok();
}

#[test]
fn the_cache_is_written_then_reused_and_a_damaged_cache_is_rebuilt() {
    let (rule, dir) = fixture();
    let work = temp_dir("cache");
    let cache = work.join("corpus.cache");
    let args = ["--json", "--rules", rule.to_str().unwrap(), "--events", dir.to_str().unwrap(), "--cache", cache.to_str().unwrap()];
    let (code, first, err) = hunt(&args);
    assert_eq!(code, 0, "{err}");
    assert!(Path::new(&cache).is_file());
    let (_, second, err) = hunt(&args);
    assert_eq!(first, second);
    assert!(!err.contains("note: cache"), "a fresh cache is used silently: {err}");
    std::fs::write(&cache, b"garbage").unwrap();
    let (code, third, err) = hunt(&args);
    assert_eq!(code, 0);
    assert_eq!(first, third);
    assert!(err.contains("not a SigmaForge corpus cache"), "{err}");
    std::fs::remove_dir_all(&work).ok();
}

/// A rule set that reads only Sysmon events leaves the EVTX files without a Sysmon record
/// unparsed, and still reports what a hunt over every parsed event (the cache path) reports.
#[test]
fn evtx_files_of_channels_no_rule_reads_are_not_parsed_and_change_nothing() {
    let data = sigmaforge_data::for_tests();
    let rule = data.join("sigma/rules/windows/image_load/image_load_susp_unsigned_dll.yml");
    let events = data.join("evtx");
    let work = temp_dir("channels");
    let cache = work.join("corpus.cache");
    let base = ["--json", "--rules", rule.to_str().unwrap(), "--events", events.to_str().unwrap()];
    let (code, pruned, err) = hunt(&base);
    assert_eq!(code, 0, "{err}");
    let summary = err.lines().find(|l| l.starts_with("events:")).unwrap_or_else(|| panic!("no summary in {err}"));
    let unread: usize = summary
        .split("; ")
        .find_map(|part| part.strip_suffix(" files hold no channel these rules read and were not parsed"))
        .unwrap_or_else(|| panic!("no unread files in: {summary}"))
        .parse()
        .unwrap();
    assert!(unread > 100, "{summary}");
    // With a cache every file is parsed (the cache must hold every event).
    let (code, full, err) = hunt(&[&base[..], &["--cache", cache.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("were not parsed"), "{err}");
    assert!(!json_lines(&full).is_empty(), "the image_load rule fires on the corpus");
    assert_eq!(pruned, full);
    std::fs::remove_dir_all(&work).ok();
}

/// In the files it reads, a hunt keeps only the records of the (Channel, EventID) buckets its
/// rules read (Sysmon 1 and Security 4688 for process_creation, all of Security for a
/// `service: security` rule), and reports what a hunt over every event (the cache path) reports.
#[test]
fn records_of_buckets_no_rule_reads_are_left_out_and_change_nothing() {
    let data = sigmaforge_data::for_tests();
    let sigma = data.join("sigma/rules/windows");
    let rules = [
        sigma.join("process_creation/proc_creation_win_whoami_execution_from_high_priv_process.yml"),
        sigma.join("process_creation/proc_creation_win_powershell_base64_encoded_obfusc.yml"),
        sigma.join("builtin/security/win_security_susp_lsass_dump_generic.yml"),
    ];
    let events = data.join("evtx");
    let work = temp_dir("buckets");
    let cache = work.join("corpus.cache");
    let mut base = vec!["--json", "--rules"];
    base.extend(rules.iter().map(|r| r.to_str().unwrap()));
    base.extend(["--events", events.to_str().unwrap()]);
    let (code, routed, err) = hunt(&base);
    assert_eq!(code, 0, "{err}");
    let summary = err.lines().find(|l| l.starts_with("events:")).unwrap_or_else(|| panic!("no summary in {err}"));
    let left_out: usize = summary
        .split("; ")
        .find_map(|part| part.strip_suffix(" records of channels and EventIDs these rules do not read were left out"))
        .unwrap_or_else(|| panic!("no records left out in: {summary}"))
        .parse()
        .unwrap();
    assert!(left_out > 1000, "{summary}");
    let (code, full, err) = hunt(&[&base[..], &["--cache", cache.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("were left out"), "the cache path reads every record: {err}");
    assert!(json_lines(&full).len() > 10, "the rules fire on the corpus");
    assert_eq!(routed, full);
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn missing_events_is_a_usage_error() {
    let (rule, _) = fixture();
    let (code, _, err) = hunt(&["--rules", rule.to_str().unwrap(), "--events", "/nonexistent/events"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/events"), "{err}");
}

/// `--full` adds the matched event (named as the rule sees it) to each JSON line, keeping every
/// other key; `--csv` writes a timeline; `--level` keeps only the given levels.
#[test]
fn full_json_carries_the_event_and_csv_writes_a_timeline() {
    let dir = temp_dir("full");
    let events = dir.join("e.jsonl");
    std::fs::write(
        &events,
        [
            r##"{"Event":{"System":{"Channel":"Security","EventID":4688,"EventRecordID":2,"Computer":"ws1","TimeCreated":{"#attributes":{"SystemTime":"2024-01-02T00:00:00Z"}}},"EventData":{"NewProcessName":"C:\\x\\whoami.exe","CommandLine":"whoami /all"}}}"##,
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":1,"EventRecordID":1,"Computer":"ws2","TimeCreated":{"#attributes":{"SystemTime":"2024-01-01T00:00:00Z"}}},"EventData":{"Image":"C:\\y\\whoami.exe","CommandLine":"whoami, \"quoted\""}}}"##,
        ]
        .join("\n"),
    )
    .unwrap();
    let rule = dir.join("whoami.yml");
    std::fs::write(&rule, "title: Whoami\nlevel: high\nstatus: test\nlogsource: {product: windows, category: process_creation}\ndetection:\n  sel:\n    Image|endswith: '\\whoami.exe'\n    CommandLine|contains: whoami\n  condition: sel\n").unwrap();
    let (r, e) = (rule.to_str().unwrap(), events.to_str().unwrap());

    let (code, out, err) = hunt(&["--json", "--full", "--rules", r, "--events", e]);
    assert_eq!(code, 0, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    let sec = lines.iter().find(|l| l["record_id"] == 2).unwrap();
    for key in ["rule_id", "rule", "title", "level", "file", "record_id", "event_id", "channel", "timestamp"] {
        assert!(sec.get(key).is_some(), "{key} missing: {sec}");
    }
    assert_eq!(sec["event"]["System"]["Computer"], "ws1", "{sec}");
    assert_eq!(sec["event"]["EventData"]["Image"], "C:\\x\\whoami.exe", "4688's NewProcessName as the rule's Image: {sec}");
    let (_, plain, _) = hunt(&["--json", "--rules", r, "--events", e]);
    assert!(json_lines(&plain).iter().all(|l| l.get("event").is_none()), "no event without --full");

    let (code, out, err) = hunt(&["--csv", "--rules", r, "--events", e]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows[0], "timestamp,rule,level,channel,event_id,computer,fields,event");
    assert!(rows[1].starts_with("2024-01-01T00:00:00Z,Whoami,high,Microsoft-Windows-Sysmon/Operational,1,ws2,"), "sorted by time: {out}");
    assert!(rows[1].contains(r#""Image: C:\y\whoami.exe; CommandLine: whoami, ""quoted""""#), "{out}");
    assert!(rows[2].contains(",Security,4688,ws1,"), "{out}");

    let (_, table, _) = hunt(&["--full", "--rules", r, "--events", e]);
    assert!(table.contains("Image=C:\\x\\whoami.exe"), "{table}");
    let (_, out, _) = hunt(&["--json", "--level", "critical", "--rules", r, "--events", e]);
    assert!(out.trim().is_empty(), "{out}");
    let (_, out, _) = hunt(&["--json", "--level", "low,high", "--status", "test", "--rules", r, "--events", e]);
    assert_eq!(json_lines(&out).len(), 2);
}

#[test]
fn timings_name_each_phase_and_change_no_result_and_files_keep_their_order() {
    // Two copies of one log: parsed largest-first (equal sizes: the later name first), the
    // corpus still takes them in name order, so `a.evtx`'s match comes before `b.evtx`'s.
    let (rule, dir) = fixture();
    let events = temp_dir("timings");
    for name in ["a.evtx", "b.evtx"] {
        std::fs::copy(dir.join(format!("{RULE_ID}.evtx")), events.join(name)).unwrap();
    }
    let args = ["--json", "--rules", rule.to_str().unwrap(), "--events", events.to_str().unwrap()];
    let (code, plain, err) = hunt(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("timings"), "no timings unless asked: {err}");
    let files: Vec<String> = json_lines(&plain).iter().map(|l| l["file"].as_str().unwrap().to_string()).collect();
    assert_eq!(files, ["a.evtx", "b.evtx"], "{plain}");

    let (code, timed, err) = hunt(&[&args[..], &["--timings"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(timed, plain, "--timings changes only stderr");
    let report = err.split_once("timings (wall, CPU of all threads):").map(|(_, r)| r).unwrap_or_else(|| panic!("no timings: {err}"));
    for phase in ["reading and checking rules", "loading events", "compiling rules per logsource", "evaluating rules", "writing results", "total"] {
        let line = report.lines().find(|l| l.trim_start().starts_with(phase)).unwrap_or_else(|| panic!("no {phase:?} line: {report}"));
        let numbers: Vec<f64> = line[line.find(phase).unwrap() + phase.len()..].split("ms").filter_map(|n| n.trim().parse().ok()).collect();
        assert_eq!(numbers.len(), 2, "wall and CPU milliseconds: {line}");
        assert!(numbers.iter().all(|n| *n >= 0.0), "{line}");
    }
    let _ = std::fs::remove_dir_all(&events);
}
