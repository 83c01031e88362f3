//! Helpers shared by the sigma e2e tests: running the built binary with the built plugin.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

pub fn data() -> PathBuf {
    sigmaforge_data::for_tests()
}

pub fn sigmaforge(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    sigmaforge_e2e::run_sigmaforge(args, stdin)
}

pub fn plugin() -> String {
    sigmaforge_e2e::wasm_plugin("sigma-plugin").display().to_string()
}

/// The first train task and its reference rule's text.
pub fn first_train_task() -> (String, String) {
    let data = data();
    let (code, out, err) = sigmaforge(&["tasks", "--plugins", &plugin(), "--data", &data.display().to_string(), "--split", "train", "--json"], None);
    assert_eq!(code, 0, "tasks failed: {err}");
    let tasks = parse_tasks(&out);
    let t = &tasks[0];
    let meta = metadata(t);
    let path = meta["rule_path"].as_str().unwrap();
    let text = std::fs::read_to_string(data.join("sigma").join(path)).unwrap();
    (t["id"].as_str().unwrap().to_string(), text)
}

/// `tasks --json` prints a JSON array (or one task per line); accept both.
pub fn parse_tasks(out: &str) -> Vec<Value> {
    match serde_json::from_str::<Value>(out) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Object(o)) if o.contains_key("tasks") => o["tasks"].as_array().unwrap().clone(),
        _ => out.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("task JSON line")).collect(),
    }
}

pub fn metadata(task: &Value) -> Value {
    match &task["metadata"] {
        Value::String(s) => serde_json::from_str(s).expect("metadata is JSON"),
        other => other.clone(),
    }
}

/// Every task of a split, with extra CLI arguments (e.g. `--plugin-config seed=7`).
pub fn list_tasks(split: &str, extra: &[&str]) -> Vec<Value> {
    let data = data();
    let plugin = plugin();
    let mut args = vec!["tasks", "--plugins", &plugin, "--data", data.to_str().unwrap(), "--split", split, "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = sigmaforge(&args, None);
    assert_eq!(code, 0, "tasks --split {split} failed: {err}");
    parse_tasks(&out)
}
