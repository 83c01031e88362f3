//! Hostile plugins against the built host: a plugin that loops, allocates 4 GiB, reads outside
//! its granted directory, opens a socket, panics or returns invalid scores is stopped with a
//! clear error for that completion, and the host goes on scoring the rest of the batch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn sigmaforge(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    sigmaforge_e2e::run_sigmaforge(args, stdin)
}

/// A plugins config for the hostile plugin with tight limits and one granted directory.
fn hostile_config(name: &str, extra: &str) -> (PathBuf, PathBuf) {
    let dir = sigmaforge_e2e::scratch_dir(name);
    let data = dir.join("granted");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the granted dir\n").unwrap();
    std::fs::write(dir.join("secret.txt"), "TOP SECRET\n").unwrap();
    let wasm = sigmaforge_e2e::wasm_plugin("hostile-plugin");
    let cfg = dir.join("plugins.yml");
    std::fs::write(
        &cfg,
        format!(
            "plugins:\n  hostile:\n    path: {}\n    limits: {{memory_mib: 64, call_timeout_ms: 300, init_timeout_ms: 5000, instances: 2}}\n    data:\n      - host: granted\n        guest: /data\n{extra}",
            wasm.display()
        ),
    )
    .unwrap();
    (cfg, dir)
}

fn batch_line(completion: &str) -> String {
    json!({"task": "t1", "completion": completion}).to_string()
}

fn score_batch(cfg: &Path, completions: &[&str]) -> (i32, Vec<Value>, String, Duration) {
    let input: String = completions.iter().map(|c| batch_line(c) + "\n").collect();
    let start = Instant::now();
    let (code, out, err) = sigmaforge(&["score", "--plugins", cfg.to_str().unwrap(), "--batch", "-", "--json"], Some(&input));
    let elapsed = start.elapsed();
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}"))).collect();
    assert_eq!(lines.len(), completions.len(), "one output per input line; stderr: {err}");
    (code, lines, err, elapsed)
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_else(|| panic!("expected an error in {v}"))
}

fn assert_ok(v: &Value, detail: &str) {
    assert!(v["error"].is_null(), "unexpected error in {v}");
    assert_eq!(v["total"], 1.0, "{v}");
    assert_eq!(v["components"][0]["detail"], detail, "{v}");
}

#[test]
fn hostile_completions_are_stopped_and_the_rest_of_the_batch_is_scored() {
    let (cfg, _dir) = hostile_config("hostile-batch", "");
    // A listener the plugin must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = format!("connect:127.0.0.1:{port}");
    let completions = [
        "echo:first",
        "loop",
        "echo:after-loop",
        "alloc:4096",
        "echo:after-alloc",
        "read:/etc/passwd",
        "read:/data/../../../etc/passwd",
        "read:/data/../secret.txt",
        "read:../secret.txt",
        "read:/data/hello.txt",
        connect.as_str(),
        "panic",
        "env",
        "echo:last",
    ];
    let (code, out, _err, elapsed) = score_batch(&cfg, &completions);
    assert_eq!(code, 1, "errors in the batch give exit code 1");
    assert_ok(&out[0], "first");

    let e = error_of(&out[1]);
    assert!(e.contains("plugin `hostile`") && e.contains("time limit of 300 ms exceeded in `score`"), "{e}");
    assert_ok(&out[2], "after-loop");

    let e = error_of(&out[3]);
    assert!(e.contains("memory cap of 64 MiB exceeded"), "{e}");
    assert_ok(&out[4], "after-alloc");

    for v in &out[5..9] {
        let e = error_of(v);
        assert!(e.contains("refused task `t1`: read "), "{e}");
        assert!(!v.to_string().contains("root:") && !v.to_string().contains("TOP SECRET"), "leaked: {v}");
    }
    assert_eq!(out[9]["components"][0]["detail"], "READ OK: hello from the granted dir");

    let e = error_of(&out[10]);
    assert!(e.contains(&format!("connect 127.0.0.1:{port}")), "{e}");
    assert!(listener.accept().is_err(), "the plugin reached the listener");

    let e = error_of(&out[11]);
    assert!(e.contains("trapped in `score`") && e.contains("hostile plugin panics on purpose"), "{e}");

    assert_eq!(out[12]["components"][0]["detail"], "0 environment variables");
    assert_ok(&out[13], "last");
    // One 300 ms timeout plus instance restarts: far below anything that looks like a hang.
    assert!(elapsed < Duration::from_secs(20), "batch took {elapsed:?}");
}

#[test]
fn invalid_scores_are_refused_with_the_plugin_and_the_problem_named() {
    let (cfg, _dir) = hostile_config("hostile-validation", "");
    let (_, out, _, _) = score_batch(&cfg, &["nan", "big", "count", "weight", "echo:fine"]);
    let e = error_of(&out[0]);
    assert!(e.contains("plugin `hostile` returned an invalid score") && e.contains("NaN"), "{e}");
    assert!(error_of(&out[1]).contains("value 1.5 (must be a finite number in [0, 1])"));
    assert!(error_of(&out[2]).contains("1 components, but it declares 2 (ok, aux)"));
    assert!(error_of(&out[3]).contains("weight inf"));
    for v in &out[..4] {
        assert_eq!(v["total"], 0.0);
    }
    assert_ok(&out[4], "fine");
}

#[test]
fn an_unknown_task_is_an_error_for_that_line_only() {
    let (cfg, _dir) = hostile_config("hostile-unknown", "");
    let input = format!("{}\n{}\nnot json\n{}\n", json!({"task": "nope", "completion": "x"}), batch_line("echo:a"), batch_line("echo:b"));
    let (code, out, _) = sigmaforge(&["score", "--plugins", cfg.to_str().unwrap(), "--batch", "-", "--json"], Some(&input));
    assert_eq!(code, 1);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert!(error_of(&lines[0]).contains("unknown task nope"));
    assert_ok(&lines[1], "a");
    assert!(error_of(&lines[2]).contains("batch line 3"));
    assert_ok(&lines[3], "b");
}

#[test]
fn a_plugin_whose_init_fails_is_refused_at_load_with_its_message() {
    let (cfg, _dir) = hostile_config("hostile-init", "    config:\n      fail-init: no data here\n");
    let (code, _, err) = sigmaforge(&["score", "--plugins", cfg.to_str().unwrap(), "--task", "t1", "--completion", "-"], Some("x"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plugin `hostile`: init failed: refusing to start: no data here"), "{err}");
}

#[test]
fn a_misspelt_config_key_is_named() {
    let (cfg, _dir) = hostile_config("hostile-typo", "    limit:\n      memory_mib: 10\n");
    let (code, _, err) = sigmaforge(&["tasks", "--plugins", cfg.to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `limit`") && err.contains("plugins.yml"), "{err}");
}

#[test]
fn a_plugin_built_against_another_contract_version_is_refused_naming_both() {
    let wasm = sigmaforge_e2e::wasm_plugin("future-plugin");
    let (code, _, err) = sigmaforge(&["plugin", "inspect", wasm.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sigmaforge:plugin@0.2.0") && err.contains("sigmaforge:plugin@0.1.1"), "{err}");
    assert!(err.contains("future_plugin.wasm"), "{err}");
    let (code, _, err) = sigmaforge(&["tool", "--plugins", wasm.to_str().unwrap(), "--call", "{}"], None);
    assert_eq!(code, 2);
    assert!(err.contains("0.2.0") && err.contains("0.1.1"), "{err}");
}

#[test]
fn files_that_are_not_plugins_are_refused_by_name() {
    let dir = sigmaforge_e2e::scratch_dir("not-plugins");
    let text = dir.join("notes.wasm");
    std::fs::write(&text, "hello").unwrap();
    let (code, _, err) = sigmaforge(&["plugin", "inspect", text.to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(err.contains("notes.wasm is not a loadable WebAssembly component (not a WebAssembly file)"), "{err}");
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (_, _, err) = sigmaforge(&["plugin", "inspect", core.to_str().unwrap()], None);
    assert!(err.contains("core wasm module, not a component"), "{err}");
    let (code, _, err) = sigmaforge(&["plugin", "inspect", dir.join("missing.wasm").to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(err.contains("missing.wasm"), "{err}");
}

#[test]
fn inspect_reports_world_version_and_components() {
    let wasm = sigmaforge_e2e::wasm_plugin("hostile-plugin");
    let (code, out, err) = sigmaforge(&["plugin", "inspect", wasm.to_str().unwrap(), "--json"], None);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["world"], "task-plugin");
    assert_eq!(v["wit_version"], "0.1.1");
    assert_eq!(v["host_wit_version"], "0.1.1");
    assert_eq!(v["references"], false);
    assert_eq!(v["info"]["name"], "hostile");
    assert_eq!(v["components"], json!([["ok", 1.0], ["aux", 0.5]]));
    assert_eq!(v["splits"][0]["split"], "train");
    assert_eq!(v["splits"][0]["tasks"], 1);
}

/// `list-tasks` is setup work (a split may be derived from a corpus): it runs under the init
/// limit (5 s here), not the 300 ms score limit; a listing that never ends is still stopped.
#[test]
fn list_tasks_gets_the_setup_limit_and_an_endless_listing_is_stopped() {
    let (cfg, _dir) = hostile_config("hostile-list", "");
    let (code, out, err) = sigmaforge(&["tasks", "--plugins", cfg.to_str().unwrap(), "--split", "slow"], None);
    assert_eq!(code, 0, "an 800 ms listing must pass under the 5 s setup limit: {err}");
    assert!(out.contains("t1"), "{out}");
    let (cfg, _dir) = hostile_config("hostile-list-forever", "    config:\n      list-forever: yes\n");
    let start = Instant::now();
    let (code, _out, err) = sigmaforge(&["tasks", "--plugins", cfg.to_str().unwrap(), "--split", "slow"], None);
    assert_ne!(code, 0);
    assert!(err.contains("time limit of 5000 ms exceeded"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "the endless listing was not stopped in time");
}
