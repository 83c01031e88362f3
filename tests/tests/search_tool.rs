//! The search tool as a user tries it by hand:
//! `sigmaforge tool --plugins search_plugin.wasm --call '{"query": "..."}'`, with the shipped
//! knowledge corpus and with a corpus of the user's own.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn plugin() -> String {
    sigmaforge_e2e::wasm_plugin("search-plugin").display().to_string()
}

/// Runs `sigmaforge tool` with `args`; returns (exit code, stdout, stderr).
fn tool(args: &[&str]) -> (i32, String, String) {
    let plugin = plugin();
    let mut all = vec!["tool", "--plugins", plugin.as_str()];
    all.extend_from_slice(args);
    let out =
        Command::new(sigmaforge_e2e::sigmaforge_bin()).args(&all).env("RUST_BACKTRACE", "0").stdin(Stdio::null()).output().expect("run sigmaforge");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn shipped_data() -> String {
    sigmaforge_data::for_tests().display().to_string()
}

fn result_ids(stdout: &str) -> Vec<String> {
    let out: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("tool output is not JSON ({e}): {stdout}"));
    out["results"].as_array().expect("results array").iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn query_over_the_shipped_corpus() {
    let data = shipped_data();
    let (code, out, err) = tool(&["--data", &data, "--call", r#"{"query": "new process created command line 4688"}"#]);
    assert_eq!(code, 0, "{err}");
    let ids = result_ids(&out);
    assert_eq!(ids.len(), 5, "default k is 5: {ids:?}");
    assert_eq!(ids[0], "win-security-4688");

    let (code, out, err) = tool(&["--data", &data, "--call", r#"{"query": "LSASS memory dump", "k": 2}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(result_ids(&out), ["attack-T1003.001", "attack-T1003"]);
    let first = &serde_json::from_str::<Value>(&out).unwrap()["results"][0];
    for field in ["title", "source_url", "snippet"] {
        assert!(!first[field].as_str().unwrap().is_empty(), "{field} is empty: {first}");
    }
    assert!(first["score"].as_f64().unwrap() > 0.0);
}

#[test]
fn json_mode_wraps_result_and_error() {
    let data = shipped_data();
    let (code, out, _) = tool(&["--data", &data, "--json", "--call", r#"{"query": "T1547.001", "k": 1}"#]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tool"], "search");
    assert_eq!(v["error"], Value::Null);
    assert_eq!(result_ids(v["result"].as_str().unwrap()), ["attack-T1547.001"]);

    let (code, out, _) = tool(&["--data", &data, "--json", "--call", r#"{"query": "x", "k": 0}"#]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"], Value::Null);
    assert_eq!(v["error"], "argument \"k\" must be a whole number from 1 to 10, got 0");
}

#[test]
fn bad_arguments_are_reported_to_the_caller() {
    let data = shipped_data();
    for (call, message) in [
        (r#"{"k": 3}"#, "missing required argument \"query\" (a string)"),
        (r#"{"query": "  "}"#, "argument \"query\" is empty"),
        (r#"{"query": ["lsass"]}"#, "argument \"query\" must be a string"),
        (r#"{"query": "lsass", "limit": 3}"#, "unknown argument \"limit\""),
    ] {
        let (code, out, err) = tool(&["--data", &data, "--call", call]);
        assert_eq!(code, 1, "{call}: {out}");
        assert!(err.contains(message), "{call}: expected {message:?} in stderr: {err}");
    }
}

#[test]
fn own_corpus_with_a_bad_line_loads_the_rest() {
    let dir = sigmaforge_e2e::scratch_dir("search-own-corpus");
    std::fs::create_dir_all(dir.join("runbooks")).unwrap();
    std::fs::write(
        dir.join("runbooks/notes.jsonl"),
        concat!(
            r#"{"id": "rb-1", "title": "Runbook: suspicious service installs", "text": "Look at System 7045 ImagePath for services pointing to temp folders.", "source_url": "https://wiki.example/rb-1"}"#,
            "\n{broken\n",
            r#"{"id": "rb-2", "title": "Runbook: password spraying", "text": "Many 4625 failures across accounts from one source.", "source_url": ""}"#,
            "\n"
        ),
    )
    .unwrap();
    let data = dir.display().to_string();
    let (code, out, err) =
        tool(&["--data", &data, "--plugin-config", "corpus_dir=/data/runbooks", "--call", r#"{"query": "service ImagePath temp"}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(result_ids(&out), ["rb-1"]);
    assert!(err.contains("notes.jsonl:2"), "the bad line is named in a warning: {err}");
}

#[test]
fn missing_corpus_fails_to_load_naming_the_directory() {
    let data = shipped_data();
    let (code, out, err) = tool(&["--data", &data, "--plugin-config", "corpus_dir=/data/no-such-dir", "--call", r#"{"query": "x"}"#]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("/data/no-such-dir"), "{err}");
}

/// A one-shot loopback HTTP server: answers the first request with `body` and returns the
/// request line it received.
fn loopback_server(body: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned();
        write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        request
    });
    (port, handle)
}

fn remote_config(name: &str, granted_port: u16, endpoint_port: u16) -> String {
    let dir = sigmaforge_e2e::scratch_dir(name);
    let file = dir.join("plugins.yml");
    std::fs::write(
        &file,
        format!(
            "plugins:\n  search:\n    path: {}\n    network: 127.0.0.1:{granted_port}\n    config:\n      endpoint: http://127.0.0.1:{endpoint_port}/api/search\n",
            plugin()
        ),
    )
    .unwrap();
    file.display().to_string()
}

/// Runs `sigmaforge tool --plugins <config.yml>` (the remote variant needs a network grant,
/// which only a config file gives).
fn tool_with_config(config: &str, call: &str) -> (i32, String, String) {
    let out = Command::new(sigmaforge_e2e::sigmaforge_bin())
        .args(["tool", "--plugins", config, "--call", call])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run sigmaforge");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn remote_variant_queries_the_granted_host() {
    let (port, server) = loopback_server(r#"{"query": "lsass", "results": [{"id": "remote-1"}]}"#);
    let config = remote_config("search-remote", port, port);
    let (code, out, err) = tool_with_config(&config, r#"{"query": "lsass dump", "k": 2}"#);
    assert_eq!(code, 0, "{err}");
    assert_eq!(result_ids(&out), ["remote-1"]);
    assert_eq!(server.join().unwrap(), "GET /api/search?q=lsass%20dump&k=2 HTTP/1.1");
}

#[test]
fn remote_variant_cannot_reach_a_host_it_was_not_granted() {
    // A server that is listening, but on a port the plugin was not granted.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = listener.local_addr().unwrap().port();
    let granted = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = remote_config("search-remote-denied", granted, open_port);
    let (code, _, err) = tool_with_config(&config, r#"{"query": "lsass"}"#);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot connect to the search endpoint"), "{err}");
    drop(listener);
}
