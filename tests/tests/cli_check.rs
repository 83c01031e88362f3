//! `sigmaforge check` as a user runs it: exit codes, `path:line:col` lines, the JSON Lines
//! fields, directories, and the whole SigmaHQ corpus.

use std::path::Path;

use serde_json::Value;

/// Runs `sigmaforge check` with `args`; returns (exit code, stdout, stderr).
fn check(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    sigmaforge_e2e::run_sigmaforge(&all, None)
}

const VALID: &str = "title: Whoami
id: 929a690e-bef0-4204-a928-ef5e620d6fcc
status: test
date: 2024-01-15
logsource:
  category: process_creation
  product: windows
detection:
  selection:
    Image|endswith: '\\whoami.exe'
  condition: selection
level: high
";

const INVALID: &str = "title: Broken
date: 2024/01/15
logsource:
  category: process_creation
  product: windows
detection:
  selection:
    Image: x
    Image: y
  condition: selection
";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn valid_rule_exits_zero() {
    let dir = sigmaforge_e2e::scratch_dir("check-valid");
    let f = write(&dir, "ok.yml", VALID);
    let (code, out, err) = check(&[&f]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 valid rule"), "{out}");
    assert!(out.contains("0 errors"), "{out}");
}

#[test]
fn invalid_rule_exits_one_with_positions() {
    let dir = sigmaforge_e2e::scratch_dir("check-invalid");
    let f = write(&dir, "bad.yml", INVALID);
    let (code, out, _) = check(&[&f]);
    assert_eq!(code, 1, "{out}");
    // The YAML duplicate key stops the parse of this document: it is reported at its line.
    assert!(out.contains(&format!("{f}:9:5: error: duplicate key 'Image'")), "{out}");
    let fixed = INVALID.replace("    Image: y\n", "");
    let g = write(&dir, "bad2.yml", &fixed);
    let (code, out, _) = check(&[&g]);
    assert_eq!(code, 1);
    assert!(out.contains(&format!("{g}:2:7: error:")) && out.contains("YYYY-MM-DD"), "{out}");
}

#[test]
fn json_lines_carry_the_documented_fields() {
    let dir = sigmaforge_e2e::scratch_dir("check-json");
    write(&dir, "a.yml", VALID);
    write(&dir, "b.yaml", &INVALID.replace("    Image: y\n", ""));
    write(&dir, "notes.txt", "not a rule, and not looked at");
    let (code, out, err) = check(&["--json", &dir.display().to_string()]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert!(!lines.is_empty());
    for d in &lines {
        for k in ["file", "line", "column", "severity", "code", "message"] {
            assert!(d.get(k).is_some(), "{k} missing in {d}");
        }
    }
    let date = lines.iter().find(|d| d["code"] == "bad-date").expect("bad-date diagnostic");
    assert_eq!(date["severity"], "error");
    assert_eq!(date["line"], 2);
    assert!(date["file"].as_str().unwrap().ends_with("b.yaml"));
    assert!(err.contains("checked 2 files"), "summary on stderr: {err}");
}

#[test]
fn warnings_do_not_fail_and_errors_in_yaml_never_crash() {
    let dir = sigmaforge_e2e::scratch_dir("check-warn");
    let f = write(&dir, "w.yml", &VALID.replace("level: high", "level: high\nmy_note: x"));
    let (code, out, _) = check(&[&f]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning:") && out.contains("custom-attribute"), "{out}");
    let g = write(&dir, "syntax.yml", "title: x\ndetection: [unclosed\n");
    let (code, out, err) = check(&[&g]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("yaml-syntax"), "{out}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_path_exits_two() {
    let (code, _, err) = check(&["/nonexistent/rules"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/rules"), "{err}");
}

#[test]
fn the_sigmahq_corpus_checks_clean() {
    let rules = sigmaforge_data::for_tests().join("sigma");
    let dirs: Vec<String> = ["rules", "rules-threat-hunting", "rules-emerging-threats"].iter().map(|d| rules.join(d).display().to_string()).collect();
    let args: Vec<&str> = dirs.iter().map(String::as_str).collect();
    let (code, out, err) = check(&args);
    assert_eq!(code, 0, "{err}\n{}", out.lines().filter(|l| l.contains(": error:")).take(20).collect::<Vec<_>>().join("\n"));
    assert!(out.contains("2858 valid rules"), "{}", out.lines().last().unwrap_or_default());
}

#[test]
fn a_misspelled_logsource_is_an_error_with_the_nearest_known_value() {
    let dir = sigmaforge_e2e::scratch_dir("check-logsource");
    let f = write(&dir, "typo.yml", &VALID.replace("category: process_creation", "category: proccess_creation"));
    let (code, out, _) = check(&[&f]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown logsource category 'proccess_creation' (did you mean process_creation?)"), "{out}");
    assert!(out.contains("0 valid rules"), "{out}");
    let (code, out, _) = check(&["--json", &f]);
    assert_eq!(code, 1);
    let d: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!((d["code"].as_str(), d["severity"].as_str()), (Some("unknown-logsource"), Some("error")), "{d}");
    // A user mapping that defines the logsource makes the rule valid.
    let mapping = write(
        &dir,
        "mapping.yml",
        "version: 1\nlogsources:\n  - logsource: {product: windows, category: proccess_creation}\n    conditions: {Channel: Microsoft-Windows-Sysmon/Operational, EventID: 1}\n",
    );
    let (code, out, err) = check(&["--logsources", &mapping, &f]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `check` and `hunt` agree on what a valid rule is: a second rule with the same id fails
/// `check`, and `hunt` leaves it out with the same error.
#[test]
fn check_and_hunt_agree_on_duplicate_ids() {
    let dir = sigmaforge_e2e::scratch_dir("check-dup");
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    write(&rules, "a.yml", VALID);
    write(&rules, "b.yml", VALID);
    let (code, out, _) = check(&[rules.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("duplicate-id"), "{out}");
    let events = dir.join("e.jsonl");
    std::fs::write(&events, r#"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":1,"EventRecordID":7},"EventData":{"Image":"C:\\x\\whoami.exe"}}}"#).unwrap();
    let (code, out, err) =
        sigmaforge_e2e::run_sigmaforge(&["hunt", "--json", "--rules", rules.to_str().unwrap(), "--events", events.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "only the first of the two rules loads: {out}");
    assert!(err.contains("b.yml:1:1: error: rule id"), "{err}");
}
