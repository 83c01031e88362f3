//! The example plugin (examples/regex-task) through the unchanged host binary: `tasks`,
//! `score` (by task, by ad-hoc reference, in a batch) and `plugin inspect`.

use serde_json::{Value, json};

fn sigmaforge(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    sigmaforge_e2e::run_sigmaforge(args, stdin)
}

fn plugin() -> String {
    sigmaforge_e2e::wasm_plugin("regex-task").display().to_string()
}

fn score_task(task: &str, completion: &str) -> Value {
    let (code, out, err) = sigmaforge(&["score", "--plugins", &plugin(), "--task", task, "--completion", "-", "--json"], Some(completion));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(out.trim()).unwrap()
}

fn tasks(split: &str) -> Vec<Value> {
    let (code, out, err) = sigmaforge(&["tasks", "--plugins", &plugin(), "--split", split, "--json"], None);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn lists_at_least_twenty_tasks_with_chat_prompts_in_two_splits() {
    let train = tasks("train");
    let test = tasks("test");
    assert!(train.len() + test.len() >= 20, "{} + {}", train.len(), test.len());
    assert!(!test.is_empty());
    let t = &train[0];
    assert_eq!(t["split"], "train");
    assert_eq!(t["prompt"][0]["role"], "system");
    assert_eq!(t["prompt"][1]["role"], "user");
    assert!(t["prompt"][1]["content"].as_str().unwrap().contains("It must match:"));
    let (code, _, err) = sigmaforge(&["tasks", "--plugins", &plugin(), "--split", "validation"], None);
    assert_eq!(code, 2);
    assert!(err.contains("no split `validation`") && err.contains("train, test"), "{err}");
}

#[test]
fn a_correct_regex_scores_full_marks_even_inside_a_think_block_and_fence() {
    let v = score_task("hex-color", "```regex\n#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})\n```");
    assert_eq!(v["task"], "hex-color");
    assert_eq!(v["total"], 1.0, "{v}");
    assert!(v["error"].is_null());
    let names: Vec<&str> = v["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["compiles", "accuracy"]);
    let wrapped = "<think>hex digits, 3 or 6 of them ```regex\nnope\n```</think>\nHere it is:\n```regex\n^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$\n```\n";
    assert_eq!(score_task("hex-color", wrapped)["total"], 1.0);
}

#[test]
fn partial_wrong_and_garbage_answers_score_lower_with_reasons() {
    // Only the 6-digit form: misses the 3-digit colours.
    let v = score_task("hex-color", "```regex\n#[0-9a-fA-F]{6}\n```");
    let total = v["total"].as_f64().unwrap();
    assert!(total > 0.2 && total < 1.0, "{v}");
    assert!(v["components"][1]["detail"].as_str().unwrap().contains("should match but does not: \"#fff\""), "{v}");
    let v = score_task("hex-color", "```regex\n([unclosed\n```");
    assert_eq!(v["total"], 0.0);
    assert!(v["components"][0]["detail"].as_str().unwrap().contains("does not compile"));
    let v = score_task("hex-color", "");
    assert_eq!(v["total"], 0.0);
}

#[test]
fn weights_come_from_the_plugin_config() {
    let (code, out, err) = sigmaforge(
        &[
            "score",
            "--plugins",
            &plugin(),
            "--plugin-config",
            "weight.compiles=0.5",
            "--plugin-config",
            "weight.accuracy=1",
            "--task",
            "cve-id",
            "--completion",
            "-",
            "--json",
        ],
        Some("CVE-[0-9]{4}-[0-9]{4,}"),
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["total"], 1.5);
    assert_eq!(v["components"][0]["weight"], 0.5);
}

#[test]
fn a_reference_file_makes_an_ad_hoc_task() {
    let dir = sigmaforge_e2e::scratch_dir("regex-reference");
    let reference = dir.join("digits.json");
    std::fs::write(&reference, json!({"positive": ["1", "42"], "negative": ["x", "4x"]}).to_string()).unwrap();
    let (code, out, err) =
        sigmaforge(&["score", "--plugins", &plugin(), "--reference", reference.to_str().unwrap(), "--completion", "-", "--json"], Some("[0-9]+"));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["total"], 1.0, "{v}");
    assert_eq!(v["task"], reference.to_str().unwrap());
    // A bad reference is an error for the task, naming the problem.
    std::fs::write(&reference, "positive: [1]").unwrap();
    let (code, out, _) =
        sigmaforge(&["score", "--plugins", &plugin(), "--reference", reference.to_str().unwrap(), "--completion", "-", "--json"], Some("x"));
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("reference must be JSON"), "{v}");
}

#[test]
fn batch_scores_every_line_in_order() {
    let dir = sigmaforge_e2e::scratch_dir("regex-batch");
    std::fs::write(dir.join("ref.json"), json!({"positive": ["ab"], "negative": ["b"]}).to_string()).unwrap();
    let lines = [
        json!({"task": "time-24h", "completion": "([01][0-9]|2[0-3]):[0-5][0-9]"}),
        json!({"task": "time-24h", "completion": "garbage ((("}),
        json!({"reference": "ref.json", "completion": "ab"}),
        json!({"task": "md5-hash", "completion": "[0-9a-f]{32}"}),
    ];
    let batch = dir.join("batch.jsonl");
    std::fs::write(&batch, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let (code, out, err) = sigmaforge(&["score", "--plugins", &plugin(), "--batch", batch.to_str().unwrap(), "--json"], None);
    assert_eq!(code, 0, "{err}");
    let out: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let totals: Vec<f64> = out.iter().map(|v| v["total"].as_f64().unwrap()).collect();
    assert_eq!(totals, [1.0, 0.0, 1.0, 1.0]);
    assert_eq!(out[2]["task"], "ref.json");
    assert_eq!(out[3]["task"], "md5-hash");
    // The one-line path form of "reference" still works, with a pointer to its replacement.
    assert!(err.contains("batch line 3: a one-line \"reference\" is read as a file path") && err.contains("\"reference_file\""), "{err}");
}

/// Batch lines are the score requests of `POST /v1/score`: `reference` is text, a path goes in
/// `reference_file`, `id` is echoed, and a bad line is an error naming the line and the problem.
#[test]
fn batch_lines_follow_the_score_request_schema() {
    let dir = sigmaforge_e2e::scratch_dir("regex-batch-schema");
    let reference = json!({"positive": ["ab"], "negative": ["b"]}).to_string();
    std::fs::write(dir.join("ref.json"), &reference).unwrap();
    let lines = [
        json!({"reference_file": "ref.json", "completion": "ab", "id": 1}),
        json!({"reference": reference.clone() + "\n", "completion": "ab", "id": "inline"}),
        json!({"task": "md5-hash", "completion": "[0-9a-f]{32}", "completoin": "x"}),
        json!({"task": "md5-hash", "reference_file": "ref.json", "completion": "x"}),
        json!({"reference_file": "missing.json", "completion": "ab", "id": {"row": 5}}),
        json!({"task": "md5-hash", "completion": "[0-9a-f]{32}", "id": null}),
    ];
    let batch = dir.join("batch.jsonl");
    std::fs::write(&batch, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let (code, out, err) = sigmaforge(&["score", "--plugins", &plugin(), "--batch", batch.to_str().unwrap(), "--json"], None);
    assert_eq!(code, 1, "three lines are refused: {err}");
    assert!(!err.contains("deprecated"), "no line uses the old path form: {err}");
    let out: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(out.len(), lines.len(), "one answer per line");
    assert_eq!((&out[0]["id"], &out[0]["task"], &out[0]["total"]), (&json!(1), &json!("ref.json"), &json!(1.0)), "{}", out[0]);
    assert_eq!((&out[1]["id"], &out[1]["task"], &out[1]["total"]), (&json!("inline"), &json!("reference"), &json!(1.0)), "{}", out[1]);
    let error = |i: usize| out[i]["error"].as_str().unwrap_or_else(|| panic!("line {} should fail: {}", i + 1, out[i])).to_string();
    assert_eq!(error(2), "batch line 3: unknown key \"completoin\" (known: task, reference, reference_file, completion, id)");
    assert_eq!(error(3), "batch line 4: give exactly one of \"task\", \"reference\" and \"reference_file\"");
    assert!(error(4).starts_with("batch line 5: reading reference ") && error(4).contains("missing.json"), "{}", out[4]);
    assert_eq!(out[4]["id"], json!({"row": 5}), "the id is echoed on errors too");
    assert!(out[5]["error"].is_null() && out[5]["total"] == 1.0, "{}", out[5]);
    assert!(out[5].as_object().unwrap().contains_key("id") && out[5]["id"].is_null(), "an explicit null id is echoed: {}", out[5]);
}

#[test]
fn inspect_shows_the_example_plugin() {
    let (code, out, err) = sigmaforge(&["plugin", "inspect", &plugin()], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("world:       task-plugin"), "{out}");
    assert!(out.contains("sigmaforge:plugin@0.1.1"), "{out}");
    assert!(out.contains("reward:      compiles (weight 0.2)") && out.contains("reward:      accuracy (weight 0.8)"), "{out}");
    assert!(out.contains("split:       train (18 tasks)") && out.contains("split:       test (6 tasks)"), "{out}");
}
