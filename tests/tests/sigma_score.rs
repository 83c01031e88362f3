//! The sigma plugin's reward through the built `sigmaforge` binary and `sigma.wasm`, as a user
//! runs it: `sigmaforge score --plugins sigma.wasm --data <dir> --task <id> --completion <file>`.

mod sigma_common;

use std::time::{Duration, Instant};

use serde_json::Value;
use sigma_common::{data, first_train_task, plugin, sigmaforge};
use sigma_task::fixtures::{reference_answer, rollouts};

fn score_task(task: &str, completion: &str) -> Value {
    let data = data();
    let (code, out, err) = sigmaforge(
        &["score", "--plugins", &plugin(), "--data", &data.display().to_string(), "--task", task, "--completion", "-", "--json"],
        Some(completion),
    );
    assert_eq!(code, 0, "score failed ({code}): {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("score output is not JSON ({e}): {out}"))
}

fn total(score: &Value) -> f64 {
    score["total"].as_f64().unwrap()
}

fn component<'a>(score: &'a Value, name: &str) -> &'a Value {
    score["components"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no component {name} in {score}"))
}

fn assert_total(score: &Value, expected: f64) {
    assert!((total(score) - expected).abs() < 1e-9, "expected total {expected}, got {score:#}");
}

#[test]
fn reference_answer_scores_full_marks_and_wrappings_do_not_matter() {
    let (task, rule) = first_train_task();
    let answer = reference_answer(&rule);
    let s = score_task(&task, &answer);
    assert_total(&s, 1.1);
    let names: Vec<&str> = s["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["yaml_valid", "logsource_correct", "iou"]);
    assert!(component(&s, "iou")["detail"].as_str().unwrap().contains("missed 0, 0 false positives"), "{s:#}");

    let wrapped = format!(
        "<think>\nThey want a rule for this.\n```yaml\ndetection: draft\n```\n</think>\nSure, here it is:\n```yaml\n{answer}```\nLet me know if it is too noisy."
    );
    assert_total(&score_task(&task, &wrapped), 1.1);
}

#[test]
fn garbage_scores_zero_and_a_silent_rule_scores_point_four() {
    let (task, rule) = first_train_task();
    let cases = rollouts(&rule);
    let garbage = cases.iter().find(|r| r.kind == "garbage").unwrap();
    let s = score_task(&task, &garbage.completion);
    assert_total(&s, 0.0);
    assert!(component(&s, "yaml_valid")["detail"].as_str().unwrap().len() > 5);

    let silent = cases.iter().find(|r| r.kind == "matches-nothing").unwrap();
    let s = score_task(&task, &silent.completion);
    assert_total(&s, 0.4);
    let iou = component(&s, "iou")["detail"].as_str().unwrap();
    assert!(iou.contains("matched 0 of"), "{iou}");
}

#[test]
fn details_say_why() {
    let (task, rule) = first_train_task();
    let cases = rollouts(&rule);
    let get = |kind: &str| &cases.iter().find(|r| r.kind == kind).unwrap().completion;

    let s = score_task(&task, get("yaml-syntax-error"));
    let d = component(&s, "yaml_valid")["detail"].as_str().unwrap();
    assert!(d.starts_with("line "), "a YAML error names its line:column in the completion: {d}");

    let s = score_task(&task, get("wrong-logsource"));
    let d = component(&s, "logsource_correct")["detail"].as_str().unwrap();
    assert!(d.contains("expected") && d.contains("sigmaforge-wrong"), "{d}");
    assert_eq!(component(&s, "logsource_correct")["value"], 0.0);

    let s = score_task(&task, get("unknown-modifier"));
    assert_eq!(component(&s, "yaml_valid")["value"], 0.0);
    assert!(component(&s, "yaml_valid")["detail"].as_str().unwrap().contains("endswithh"), "{s:#}");
}

#[test]
fn an_ad_hoc_reference_rule_file_works_like_a_task() {
    let (_, rule) = first_train_task();
    let dir = std::env::temp_dir().join(format!("sf-sigma-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let reference = dir.join("reference.yml");
    std::fs::write(&reference, &rule).unwrap();
    let data = data();
    let (code, out, err) = sigmaforge(
        &[
            "score",
            "--plugins",
            &plugin(),
            "--data",
            &data.display().to_string(),
            "--reference",
            &reference.display().to_string(),
            "--completion",
            "-",
            "--json",
        ],
        Some(&reference_answer(&rule)),
    );
    assert_eq!(code, 0, "{err}");
    assert_total(&serde_json::from_str(&out).unwrap(), 1.1);
}

#[test]
fn unknown_task_is_a_clear_error() {
    let data = data();
    let (code, out, err) = sigmaforge(
        &["score", "--plugins", &plugin(), "--data", &data.display().to_string(), "--task", "no-such-rule#0", "--completion", "-", "--json"],
        Some("x"),
    );
    assert_ne!(code, 0);
    assert!(format!("{out}{err}").contains("no-such-rule"), "{out}{err}");
}

/// Hostile completions: each is scored (not an error, not a crash) within the call time limit,
/// with a diagnostic.
#[test]
fn adversarial_completions_are_scored_with_a_diagnostic() {
    let (task, _) = first_train_task();
    let alias_bomb = {
        let mut s = String::from("logsource:\n  product: windows\ndetection:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            s.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        s.push_str("  condition: a11\n");
        s
    };
    let huge = format!("```yaml\n{}\n```", "x".repeat(5 * 1024 * 1024));
    let deep = format!("logsource:\n  product: windows\ndetection:\n  sel: {}1{}\n  condition: sel\n", "[".repeat(10_000), "]".repeat(10_000));
    let regex = "logsource:\n  product: windows\n  category: process_creation\ndetection:\n  sel:\n    CommandLine|re: '((a{1000}){1000}){1000}'\n  condition: sel\n".to_string();
    let batch: String =
        [&alias_bomb, &huge, &deep, &regex].iter().map(|c| serde_json::json!({"task": task, "completion": c}).to_string() + "\n").collect();
    let dir = std::env::temp_dir().join(format!("sf-sigma-adv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let batch_file = dir.join("batch.jsonl");
    std::fs::write(&batch_file, batch).unwrap();

    let data = data();
    let started = Instant::now();
    let (code, out, err) = sigmaforge(
        &["score", "--plugins", &plugin(), "--data", &data.display().to_string(), "--batch", &batch_file.display().to_string(), "--json"],
        None,
    );
    let elapsed = started.elapsed();
    assert_eq!(code, 0, "every hostile completion must be scored, not fail: {err}\n{out}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    for (name, s) in ["alias bomb", "5 MB", "10,000-deep", "regex repetition"].iter().zip(&lines) {
        assert!(s["error"].is_null(), "{name}: {s:#}");
        assert_eq!(component(s, "yaml_valid")["value"], 0.0, "{name}: {s:#}");
        assert_eq!(component(s, "iou")["value"], 0.0, "{name}: {s:#}");
        let d = component(s, "yaml_valid")["detail"].as_str().unwrap();
        assert!(!d.is_empty(), "{name}: no diagnostic");
    }
    assert!(component(&lines[1], "yaml_valid")["detail"].as_str().unwrap().contains("limit"), "{:#}", lines[1]);
    // Generous bound: start-up + plugin load + four calls each under the 2 s call limit.
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
}

/// Models often end a rule with `---` or add a second YAML document: the reference's own
/// detection still scores full marks, and the detail says which document was taken.
#[test]
fn a_trailing_document_marker_or_a_second_document_does_not_cost_the_reward() {
    let (task, rule) = first_train_task();
    let answer = reference_answer(&rule);
    let s = score_task(&task, &format!("{answer}---\n"));
    assert_total(&s, 1.1);
    let s = score_task(&task, &format!("```yaml\n{answer}---\nnote: written for the SOC\n```\n"));
    assert_total(&s, 1.1);
    let d = component(&s, "yaml_valid")["detail"].as_str().unwrap();
    assert!(d.contains("document 1 of 2"), "{d}");
}

/// Not UTF-8 on stdin: a bad completion, scored 0 in every component with a diagnostic (exit 0).
#[test]
fn a_completion_that_is_not_utf8_scores_zero_with_a_diagnostic() {
    let (task, rule) = first_train_task();
    let mut bytes = reference_answer(&rule).into_bytes();
    bytes.extend_from_slice(b"\xff\xfe oops\n");
    let data = data();
    let (code, out, err) = sigmaforge_e2e::run_sigmaforge_bytes(
        &["score", "--plugins", &plugin(), "--data", &data.display().to_string(), "--task", &task, "--completion", "-", "--json"],
        Some(&bytes),
    );
    assert_eq!(code, 0, "{err}\n{out}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_total(&s, 0.0);
    assert_eq!(s["components"].as_array().unwrap().len(), 3, "{s:#}");
    assert!(component(&s, "yaml_valid")["detail"].as_str().unwrap().contains("not UTF-8"), "{s:#}");
}

/// A rule with an `|expand` placeholder is valid for `check` (a warning) and so for the reward;
/// the IoU detail names the counts `hunt` would report.
#[test]
fn an_expand_placeholder_is_valid_as_check_says_and_counts_name_hunt() {
    let (task, _) = first_train_task();
    let completion = "logsource:\n  product: windows\n  category: process_creation\ndetection:\n  sel:\n    ParentImage|expand: '%admin_tools%'\n  sel2:\n    Image|endswith: '\\whoami.exe'\n  condition: sel or sel2\n";
    let s = score_task(&task, completion);
    assert_eq!(component(&s, "yaml_valid")["value"], 1.0, "{s:#}");
    assert!(component(&s, "yaml_valid")["detail"].as_str().unwrap().contains("matches nothing"), "{s:#}");
    assert!(component(&s, "iou")["detail"].as_str().unwrap().contains("`sigmaforge hunt`"), "{s:#}");
}
