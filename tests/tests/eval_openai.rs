//! `sigmaforge eval --policy openai:<url>#<model>` against an OpenAI-compatible server that runs
//! inside the test (plain std TcpListener + one thread per connection) and serves prepared
//! answers per task. The report's numbers are checked against the prepared answers' scores,
//! computed independently with `sigmaforge score --batch`.
//!
//! The sigma plugin is loaded through a plugins config with a generous call time limit: listing
//! the test split takes about a second on a quiet machine but can pass the default 2 s limit when
//! the machine is busy, and this file tests the eval, not the plugin's speed. The tests run one
//! at a time (each `sigmaforge` process parses the whole EVTX corpus at start-up).

mod sigma_common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use sigma_common::{data, metadata, parse_tasks, sigmaforge};
use sigma_task::fixtures::{reference_answer, rollouts};

/// What the server does with one request.
enum Reply {
    /// 200 with this chat-completions JSON.
    Ok(Value),
    /// This status and raw body.
    Raw(u16, String),
    /// Sleep this long before answering (past the client's timeout), then answer with `Ok`.
    Sleep(Duration, Value),
}

/// The server's view of one request: its JSON body, the user prompt, how many requests for
/// that prompt came before it (the Authorization headers are logged in `Server::auth`).
struct Seen {
    body: Value,
    prompt: String,
    attempt: u32,
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

struct Server {
    url: String,
    requests: Arc<Mutex<Vec<Value>>>,
    auth: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve(handler: Arc<Handler>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let (req_log, auth_log) = (requests.clone(), auth.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (handler, attempts, req_log, auth_log) = (handler.clone(), attempts.clone(), req_log.clone(), auth_log.clone());
            std::thread::spawn(move || handle(stream, &*handler, &attempts, &req_log, &auth_log));
        }
    });
    Server { url, requests, auth }
}

fn handle(
    stream: TcpStream,
    handler: &Handler,
    attempts: &Mutex<HashMap<String, u32>>,
    req_log: &Mutex<Vec<Value>>,
    auth_log: &Mutex<Vec<Option<String>>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let (mut length, mut authorization) = (0usize, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    assert!(request_line.starts_with("POST /v1/chat/completions "), "unexpected request: {request_line}");
    let body: Value = serde_json::from_slice(&body).expect("the client sends JSON");
    let prompt = body["messages"].as_array().unwrap().iter().find(|m| m["role"] == "user").unwrap()["content"].as_str().unwrap().to_string();
    let attempt = {
        let mut a = attempts.lock().unwrap();
        let n = a.entry(prompt.clone()).or_insert(0);
        *n += 1;
        *n
    };
    req_log.lock().unwrap().push(body.clone());
    auth_log.lock().unwrap().push(authorization);
    let seen = Seen { body, prompt, attempt };
    let (status, text) = match handler(&seen) {
        Reply::Ok(v) => (200, v.to_string()),
        Reply::Raw(status, text) => (status, text),
        Reply::Sleep(d, v) => {
            std::thread::sleep(d);
            (200, v.to_string())
        }
    };
    let mut stream = stream;
    let head = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", text.len());
    // The client may have given up (timeout); a failed write is expected then.
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(text.as_bytes()));
}

/// A chat-completions reply with this content and usage.
fn answer(content: &str, tokens_in: u64, tokens_out: u64) -> Value {
    json!({
        "id": "chatcmpl-test", "object": "chat.completion", "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}
    })
}

struct TestTask {
    id: String,
    prompt: String,
    rule: String,
}

/// One test at a time (see the file's docs).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A plugins config for the sigma plugin: the shared data granted at /data, two instances, and a
/// 60 s call limit.
fn plugin() -> String {
    static CONFIG: OnceLock<PathBuf> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir = sigmaforge_e2e::scratch_dir("eval-openai-config");
            let config = json!({"plugins": {"sigma": {
                "path": sigmaforge_e2e::wasm_plugin("sigma-plugin"),
                "limits": {"call_timeout_ms": 60_000, "instances": 2},
                "data": [{"host": data(), "guest": "/data"}],
            }}});
            let file = dir.join("sigma-plugins.json");
            std::fs::write(&file, config.to_string()).unwrap();
            file
        })
        .display()
        .to_string()
}

/// The first `n` tasks of the test split, with their reference rules.
fn test_tasks(n: usize) -> Vec<TestTask> {
    static ALL: OnceLock<Vec<Value>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let (code, out, err) = sigmaforge(&["tasks", "--plugins", &plugin(), "--split", "test", "--json"], None);
        assert_eq!(code, 0, "tasks failed: {err}");
        parse_tasks(&out)
    });
    let data = data();
    all.iter()
        .take(n)
        .map(|t| {
            let meta = metadata(t);
            let rule = std::fs::read_to_string(data.join("sigma").join(meta["rule_path"].as_str().unwrap())).unwrap();
            let prompt = t["prompt"].as_array().unwrap().iter().find(|m| m["role"] == "user").unwrap()["content"].as_str().unwrap().to_string();
            TestTask { id: t["id"].as_str().unwrap().to_string(), prompt, rule }
        })
        .collect()
}

/// Each task's prompt → (its index, the reference rule as a model would answer it).
fn reference_answers(tasks: &[TestTask]) -> HashMap<String, (usize, String)> {
    tasks.iter().enumerate().map(|(i, t)| (t.prompt.clone(), (i, reference_answer(&t.rule)))).collect()
}

/// The plugin's scores of (task id, completion) pairs, through `sigmaforge score --batch`.
fn scores(items: &[(String, String)]) -> Vec<Value> {
    let batch: String = items.iter().map(|(t, c)| format!("{}\n", json!({"task": t, "completion": c}))).collect();
    let (code, out, err) = sigmaforge(&["score", "--plugins", &plugin(), "--batch", "-", "--json"], Some(&batch));
    assert_eq!(code, 0, "score failed: {err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn component(score: &Value, name: &str) -> f64 {
    score["components"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["value"].as_f64().unwrap()
}

/// Runs `sigmaforge eval` with extra environment variables; (exit code, stdout, stderr).
fn eval(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(sigmaforge_e2e::sigmaforge_bin());
    cmd.arg("eval").args(args).env("RUST_BACKTRACE", "0").env_remove("OPENAI_API_KEY");
    cmd.env("SIGMAFORGE_CACHE", sigmaforge_e2e::target_dir().join("e2e-cwasm-cache"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sigmaforge eval");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn read_report(dir: &Path) -> (Value, Vec<Value>) {
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let lines = std::fs::read_to_string(dir.join("completions.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (report, lines)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn base_args<'a>(url: &'a str, out: &'a Path, data: &'a Path, plugin: &'a str, limit: &'a str) -> Vec<String> {
    vec![
        "--plugins".into(),
        plugin.into(),
        "--data".into(),
        data.display().to_string(),
        "--policy".into(),
        format!("openai:{url}#test-model"),
        "--split".into(),
        "test".into(),
        "--limit".into(),
        limit.into(),
        "--out".into(),
        out.display().to_string(),
        "--quiet".into(),
    ]
}

#[test]
fn eval_over_http_reports_the_prepared_answers_scores() {
    let _serial = serial();
    let tasks = test_tasks(6);
    // Two reference answers (1.1), two refusals (0), two rules that match nothing (0.4).
    let kinds = ["reference", "reference", "garbage", "garbage", "matches-nothing", "matches-nothing"];
    let prepared: Vec<(String, String)> = tasks
        .iter()
        .zip(kinds)
        .map(|(t, kind)| {
            let completion = match kind {
                "reference" => reference_answer(&t.rule),
                k => rollouts(&t.rule).into_iter().find(|r| r.kind == k).unwrap().completion,
            };
            (t.id.clone(), completion)
        })
        .collect();
    let expected = scores(&prepared);
    let totals: Vec<f64> = expected.iter().map(|s| s["total"].as_f64().unwrap()).collect();
    assert!(close(totals[0], 1.1) && close(totals[2], 0.0) && close(totals[4], 0.4), "fixture scores changed: {totals:?}");

    let by_prompt: HashMap<String, (String, u64, u64)> =
        tasks.iter().enumerate().map(|(i, t)| (t.prompt.clone(), (prepared[i].1.clone(), 100 + i as u64, 10 * (i as u64 + 1)))).collect();
    let server = serve(Arc::new(move |seen: &Seen| {
        let (text, tin, tout) = by_prompt.get(&seen.prompt).expect("a known task prompt");
        Reply::Ok(answer(text, *tin, *tout))
    }));

    let out = sigmaforge_e2e::scratch_dir("eval-openai");
    let data = data();
    let plugin = plugin();
    let mut args = base_args(&server.url, &out, &data, &plugin, "6");
    args.extend(
        ["--concurrency", "3", "--price-in", "2", "--price-out", "8", "--temperature", "0", "--max-tokens", "300", "--api-key-env", "SF_TEST_KEY"]
            .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = eval(&args, &[("SF_TEST_KEY", "sk-test-123")]);
    assert_eq!(code, 0, "eval failed: {stderr}\n{stdout}");
    assert!(!stdout.contains("failed"), "{stdout}");

    let (r, lines) = read_report(&out);
    let n = 6.0;
    let mean = |f: &dyn Fn(&Value) -> f64| expected.iter().map(f).sum::<f64>() / n;
    assert_eq!(r["samples"], 6);
    assert_eq!(r["failed"], 0);
    assert_eq!(r["model"], "test-model");
    assert!(close(r["mean_reward"].as_f64().unwrap(), mean(&|s| s["total"].as_f64().unwrap())), "{r:#}");
    assert!(close(r["mean_reward"].as_f64().unwrap(), (2.0 * 1.1 + 2.0 * 0.4) / 6.0), "{r:#}");
    for c in ["yaml_valid", "logsource_correct", "iou"] {
        assert!(close(r["components"][c].as_f64().unwrap(), mean(&|s| component(s, c))), "{c}: {r:#}");
    }
    assert!(close(r["yaml_valid_rate"].as_f64().unwrap(), mean(&|s| f64::from(component(s, "yaml_valid") > 0.0))));
    assert!(close(r["logsource_accuracy"].as_f64().unwrap(), mean(&|s| f64::from(component(s, "logsource_correct") >= 1.0))));
    assert!(close(r["mean_iou"].as_f64().unwrap(), mean(&|s| component(s, "iou"))));
    assert!(close(r["perfect_share"].as_f64().unwrap(), 2.0 / 6.0), "{r:#}");
    // Tokens: prompt 100..105, completion 10..60, as the server's `usage` said.
    let (tin, tout) = ((100..106).sum::<u64>(), (1..=6).map(|i| 10 * i).sum::<u64>());
    assert_eq!(r["tokens"]["input_total"], tin);
    assert_eq!(r["tokens"]["output_total"], tout);
    assert!(close(r["tokens"]["input_per_query"].as_f64().unwrap(), tin as f64 / n));
    let cost = (tin as f64 * 2.0 + tout as f64 * 8.0) / 1e6;
    assert!(close(r["cost_total_usd"].as_f64().unwrap(), cost), "{r:#}");
    assert!(close(r["cost_per_query_usd"].as_f64().unwrap(), cost / n), "{r:#}");
    let (p50, p95) = (r["latency_p50_s"].as_f64().unwrap(), r["latency_p95_s"].as_f64().unwrap());
    assert!(p50 > 0.0 && p95 >= p50 && p95 < 30.0, "{r:#}");
    assert!(r["tools"].is_null());

    // Every completion is kept, with its score, diagnostics, persona and usage.
    assert_eq!(lines.len(), 6);
    for (line, (exp, task)) in lines.iter().zip(expected.iter().zip(&tasks)) {
        assert_eq!(line["task_id"], task.id.as_str());
        assert!(close(line["score"].as_f64().unwrap(), exp["total"].as_f64().unwrap()), "{line:#}");
        assert!(line["persona"].as_str().is_some_and(|p| !p.is_empty()), "{line:#}");
        assert_eq!(line["diagnostics"].as_object().unwrap().len(), 3, "{line:#}");
        assert_eq!(line["attempts"], 1);
        assert!(line["prompt"].as_array().unwrap().iter().any(|m| m["content"] == task.prompt.as_str()));
    }
    assert!(lines[2]["completion"].as_str().unwrap().contains("can't help"));

    // What went over the wire: model, options, the key from the named variable, no tools.
    let requests = server.requests.lock().unwrap();
    assert_eq!(requests.len(), 6);
    for req in requests.iter() {
        assert_eq!(req["model"], "test-model");
        assert_eq!(req["temperature"], 0.0);
        assert_eq!(req["max_tokens"], 300);
        assert!(req.get("tools").is_none());
        assert_eq!(req["messages"][0]["role"], "system");
    }
    assert!(server.auth.lock().unwrap().iter().all(|a| a.as_deref() == Some("Bearer sk-test-123")));

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| test-model | 0.500 | [") && md.contains("] | 66.7% | 66.7% | 0.333 | 33.3% |"), "{md}");
    let png = std::fs::read(out.join("report.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 2000);

    // Two reports → one comparison table, models as rows.
    let (code, table, err) = sigmaforge(&["eval-compare", out.to_str().unwrap(), out.join("report.json").to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(table.lines().filter(|l| l.starts_with("| test-model |")).count(), 2, "{table}");
}

#[test]
fn flaky_server_is_retried_and_hopeless_samples_are_recorded_as_failed() {
    let _serial = serial();
    let tasks = test_tasks(8);
    let by_prompt = reference_answers(&tasks);
    let slow = Duration::from_millis(2500);
    let server = serve(Arc::new(move |seen: &Seen| {
        let (i, text) = by_prompt.get(&seen.prompt).expect("a known task prompt").clone();
        let good = answer(&text, 50, 5);
        let first = seen.attempt == 1;
        match i {
            0 if first => Reply::Sleep(slow, good), // times out, then answers
            1 if first => Reply::Raw(500, r#"{"error": "overloaded"}"#.into()),
            2 if first => Reply::Raw(200, String::new()),
            3 if first => Reply::Raw(200, "<html>bad gateway</html>".into()),
            4 => Reply::Raw(503, "upstream down".into()),
            5 => Reply::Sleep(slow, good),
            6 => Reply::Raw(200, "not json at all".into()),
            7 => Reply::Ok(json!({"id": "x", "choices": []})),
            _ => Reply::Ok(good),
        }
    }));
    let out = sigmaforge_e2e::scratch_dir("eval-openai-flaky");
    let data = data();
    let plugin = plugin();
    let mut args = base_args(&server.url, &out, &data, &plugin, "8");
    args.extend(["--timeout", "1", "--retries", "2", "--retry-backoff", "0.05", "--concurrency", "8"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = eval(&args, &[]);
    assert_eq!(code, 0, "an eval with failed samples still finishes: {stderr}\n{stdout}");
    assert!(stdout.contains("4 of 8 samples failed"), "{stdout}");

    let (r, lines) = read_report(&out);
    assert_eq!((r["samples"].as_u64(), r["failed"].as_u64()), (Some(8), Some(4)), "{r:#}");
    // The four recovered samples answered with the reference rule (1.1); the failed count 0.
    assert!(close(r["mean_reward"].as_f64().unwrap(), 4.0 * 1.1 / 8.0), "{r:#}");
    for (i, first_error) in [(0, "timed out"), (1, "HTTP 500"), (2, "empty body"), (3, "not JSON")] {
        let l = &lines[i];
        assert_eq!(l["failed"], false, "{l:#}");
        assert_eq!(l["attempts"], 2, "{l:#}");
        assert!(close(l["score"].as_f64().unwrap(), 1.1), "{l:#}");
        let errs = l["attempt_errors"].as_array().unwrap();
        assert!(errs.len() == 1 && errs[0].as_str().unwrap().contains(first_error), "task {i}: {l:#}");
    }
    let reasons: HashMap<String, String> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["task_id"].as_str().unwrap().to_string(), f["reason"].as_str().unwrap().to_string()))
        .collect();
    for (i, why) in [(4, "HTTP 503"), (5, "timed out"), (6, "not JSON"), (7, "no choices[0].message")] {
        let reason = &reasons[&tasks[i].id];
        assert!(reason.contains(why) && reason.contains("after 3 attempts"), "task {i}: {reason}");
        let l = &lines[i];
        assert_eq!((l["failed"].as_bool(), l["score"].as_f64(), l["attempts"].as_u64()), (Some(true), Some(0.0), Some(3)), "{l:#}");
        assert!(l["completion"].is_null());
    }
    // Latency percentiles cover the answered samples only.
    assert!(r["latency_p50_s"].as_f64().unwrap() < 2.0, "{r:#}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Failed samples (4 of 8)"), "{md}");
}

#[test]
fn tool_calls_go_through_the_search_plugin_and_are_reported() {
    let _serial = serial();
    let tasks = test_tasks(3);
    let by_prompt = reference_answers(&tasks);
    let checks: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen_checks = checks.clone();
    let server = serve(Arc::new(move |seen: &Seen| {
        let (i, text) = by_prompt.get(&seen.prompt).expect("a known task prompt").clone();
        let messages = seen.body["messages"].as_array().unwrap();
        let tool_msg = messages.iter().find(|m| m["role"] == "tool");
        let call = |name: &str, args: &str| {
            json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": args}}]}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3}})
        };
        match (i, tool_msg) {
            // Task 0 searches, then answers with the reference rule.
            (0, None) => {
                let offered = seen.body["tools"].as_array().expect("tools are offered on the first turn");
                assert_eq!(offered[0]["function"]["name"], "search");
                assert_eq!(offered[0]["function"]["parameters"]["required"][0], "query");
                Reply::Ok(call("search", r#"{"query": "new process created command line 4688", "k": 2}"#))
            }
            (0, Some(t)) => {
                assert_eq!(t["tool_call_id"], "call_0");
                let content = t["content"].as_str().unwrap();
                seen_checks.lock().unwrap().push(format!("search result: {content}"));
                assert!(seen.body.get("tools").is_none(), "after --max-tool-turns 1 the model must answer");
                assert_eq!(messages[messages.len() - 2]["tool_calls"][0]["id"], "call_0");
                Reply::Ok(answer(&text, 20, 5))
            }
            // Task 1 calls a tool that does not exist: the error goes back to the model.
            (1, None) => Reply::Ok(call("no_such_tool", "{}")),
            (1, Some(t)) => {
                seen_checks.lock().unwrap().push(format!("bad call: {}", t["content"].as_str().unwrap()));
                Reply::Ok(answer("I could not look it up.", 20, 5))
            }
            // Task 2 answers straight away.
            _ => Reply::Ok(answer(&text, 10, 5)),
        }
    }));
    let out = sigmaforge_e2e::scratch_dir("eval-openai-tools");
    let data = data();
    let plugin = plugin();
    let search = sigmaforge_e2e::wasm_plugin("search-plugin");
    let mut args = base_args(&server.url, &out, &data, &plugin, "3");
    args.extend(["--plugins".to_string(), search.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = eval(&args, &[]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(stdout.contains("tool calls: 2 of 3 samples"), "{stdout}");

    let checks = checks.lock().unwrap();
    let search_result = checks.iter().find(|c| c.starts_with("search result: ")).expect("the search result reached the model");
    assert!(search_result.contains("4688"), "{search_result}");
    let bad = checks.iter().find(|c| c.starts_with("bad call: ")).expect("the bad call was answered");
    assert!(bad.contains("error: unknown tool `no_such_tool`"), "{bad}");

    let (r, lines) = read_report(&out);
    let t = &r["tools"];
    assert_eq!(t["tools"], json!(["search"]));
    assert_eq!(t["samples_with_call"], 2);
    assert!(close(t["tool_call_share"].as_f64().unwrap(), 2.0 / 3.0));
    assert!(close(t["mean_reward_with_call"].as_f64().unwrap(), 1.1 / 2.0), "{t:#}");
    assert!(close(t["mean_reward_without_call"].as_f64().unwrap(), 1.1), "{t:#}");
    // Usage sums over both turns of a tool-using sample.
    assert_eq!(lines[0]["usage"], json!({"tokens_in": 30, "tokens_out": 8}));
    let transcript = lines[0]["transcript"].as_array().unwrap();
    let roles: Vec<&str> = transcript.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"]);
    assert_eq!(lines[0]["tool_calls"], 1);
    assert_eq!(lines[2]["tool_calls"], 0);
}

#[test]
fn paraphrase_pass_rewords_requests_before_the_model_sees_them() {
    let _serial = serial();
    let tasks = test_tasks(3);
    let by_request: HashMap<String, (usize, String)> =
        tasks.iter().enumerate().map(|(i, t)| (t.prompt.clone(), (i, reference_answer(&t.rule)))).collect();
    let server = serve(Arc::new(move |seen: &Seen| {
        match seen.body["model"].as_str().unwrap() {
            // The paraphraser: a fixed rewording; the second task's request always fails.
            "para-model" => {
                assert_eq!(seen.body["temperature"], 0.0);
                assert!(seen.body["messages"][0]["content"].as_str().unwrap().contains("rewrite requests"));
                let (i, _) = &by_request[&seen.prompt];
                if *i == 1 { Reply::Raw(500, "paraphraser down".into()) } else { Reply::Ok(answer(&format!("Reworded: {}", seen.prompt), 7, 7)) }
            }
            // The model under test answers reworded requests with the reference rule and the
            // one left as written with a refusal, so the report shows which it saw.
            _ => match seen.prompt.strip_prefix("Reworded: ") {
                Some(original) => Reply::Ok(answer(&by_request[original].1, 10, 5)),
                None => Reply::Ok(answer("I can't help with that.", 10, 5)),
            },
        }
    }));
    let out = sigmaforge_e2e::scratch_dir("eval-openai-paraphrase");
    let data = data();
    let plugin = plugin();
    let mut args = base_args(&server.url, &out, &data, &plugin, "3");
    args.extend([
        "--paraphrase".to_string(),
        format!("openai:{}#para-model", server.url),
        "--retries".into(),
        "1".into(),
        "--retry-backoff".into(),
        "0.01".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = eval(&args, &[]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(stdout.contains("1 of 3 requests could not be paraphrased"), "{stdout}");

    let (r, lines) = read_report(&out);
    assert_eq!(r["paraphrase"], json!({"model": "para-model", "paraphrased": 2, "failed": 1}));
    assert!(close(r["mean_reward"].as_f64().unwrap(), 2.0 * 1.1 / 3.0), "{r:#}");
    for (i, line) in lines.iter().enumerate() {
        let user = line["prompt"].as_array().unwrap().iter().find(|m| m["role"] == "user").unwrap()["content"].as_str().unwrap();
        if i == 1 {
            assert_eq!(user, tasks[1].prompt);
            assert!(line["original_request"].is_null());
            assert!(line["paraphrase_error"].as_str().unwrap().contains("paraphraser down"), "{line:#}");
        } else {
            assert_eq!(user, format!("Reworded: {}", tasks[i].prompt));
            assert_eq!(line["original_request"], tasks[i].prompt.as_str());
        }
        // The system prompt (the output contract) is never reworded.
        assert_eq!(line["prompt"][0]["role"], "system");
        assert!(!line["prompt"][0]["content"].as_str().unwrap().starts_with("Reworded"));
    }
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    let _serial = serial();
    let data = data();
    let plugin = plugin();
    let out = sigmaforge_e2e::scratch_dir("eval-openai-bad");
    let (code, _, err) = eval(&["--plugins", &plugin, "--policy", "gpt-4o", "--out", out.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("unknown policy `gpt-4o`") && err.contains("openai:<base_url>#<model>") && err.contains("local:<model dir or .gguf>"),
        "{err}"
    );

    let (code, _, err) = eval(
        &["--plugins", &plugin, "--data", data.to_str().unwrap(), "--policy", "openai:http://127.0.0.1:9/v1#m", "--split", "nope", "--quiet"],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("unknown split `nope`") && err.contains("train"), "{err}");

    let missing = PathBuf::from("/nonexistent/plugin.wasm");
    let (code, _, err) = eval(&["--plugins", missing.to_str().unwrap(), "--policy", "openai:http://127.0.0.1:9/v1#m"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/plugin.wasm"), "{err}");
}

#[test]
fn an_interrupted_eval_resumes_without_asking_again() {
    let _serial = serial();
    let tasks = test_tasks(6);
    let by_prompt = reference_answers(&tasks);
    let data = data();
    let plugin = plugin();
    let out = sigmaforge_e2e::scratch_dir("eval-openai-resume");

    // First run: the endpoint goes down for the last three tasks.
    let lookup = by_prompt.clone();
    let first = serve(Arc::new(move |seen: &Seen| {
        let (i, text) = lookup.get(&seen.prompt).expect("a known task prompt").clone();
        if i >= 3 { Reply::Raw(503, "upstream down".into()) } else { Reply::Ok(answer(&text, 40, 4)) }
    }));
    let mut args = base_args(&first.url, &out, &data, &plugin, "6");
    args.extend(["--retries", "0", "--concurrency", "2"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = eval(&argv, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("3 of 6 samples failed"), "{stdout}");
    // Every answer was journaled: the header, then one line per sample.
    let journal = out.join("answers.jsonl");
    assert_eq!(std::fs::read_to_string(&journal).unwrap().lines().count(), 7);
    // The process "dies" while writing one more line.
    let mut f = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    f.write_all(br#"{"task_id":"cut-short","prompt":[{"ro"#).unwrap();
    drop(f);

    // Starting afresh in the same directory would throw the answers away: refused.
    let (code, _, stderr) = eval(&argv, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--resume"), "{stderr}");

    // Resumed against an endpoint that is back (at another address): only the three failed
    // tasks are asked again.
    let lookup = by_prompt.clone();
    let second = serve(Arc::new(move |seen: &Seen| Reply::Ok(answer(&lookup[&seen.prompt].1, 40, 4))));
    let resume_args = |url: &str, model: &str| -> Vec<String> {
        let mut a = base_args(url, &out, &data, &plugin, "6");
        let at = a.iter().position(|x| x == "--out").unwrap();
        a[at] = "--resume".into();
        let policy = a.iter().position(|x| x == "--policy").unwrap() + 1;
        a[policy] = format!("openai:{url}#{model}");
        a.extend(["--retries", "0"].map(String::from));
        a
    };
    let args = resume_args(&second.url, "test-model");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = eval(&argv, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("3 answered sample(s) kept") && stderr.contains("could not be read"), "{stderr}");
    let asked: Vec<String> = second
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["messages"].as_array().unwrap().iter().find(|m| m["role"] == "user").unwrap()["content"].as_str().unwrap().to_string())
        .collect();
    let mut asked_tasks: Vec<usize> = asked.iter().map(|p| by_prompt[p].0).collect();
    asked_tasks.sort();
    assert_eq!(asked_tasks, [3, 4, 5], "only the failed tasks are asked again");
    assert!(!stdout.contains("samples failed"), "{stdout}");
    let (r, lines) = read_report(&out);
    assert_eq!((r["samples"].as_u64(), r["failed"].as_u64()), (Some(6), Some(0)), "{r:#}");
    assert!(close(r["mean_reward"].as_f64().unwrap(), 1.1), "every sample is a reference rule: {r:#}");
    assert_eq!(r["tokens"]["input_total"].as_u64(), Some(6 * 40), "kept samples keep their usage: {r:#}");
    for (l, t) in lines.iter().zip(&tasks) {
        assert_eq!(l["task_id"].as_str(), Some(t.id.as_str()), "task order is kept");
    }

    // A journal is never continued with another model.
    let args = resume_args(&second.url, "other-model");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = eval(&argv, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("model `test-model`") && stderr.contains("other-model"), "{stderr}");
}
