//! `sigmaforge serve` under load, on loopback, with the real Sigma plugin: several concurrent
//! clients send batches that mix correct rules with hostile completions; every item comes back
//! exactly once, in order, scored; the server answers health and metrics; SIGTERM stops it
//! gracefully. Bounded in count and time. And the TRL and verl snippets of docs/serve.md, run
//! with python3 against the server, give the scores `sigmaforge score` gives.

#[path = "sigma_common/mod.rs"]
mod sigma_common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    start_server_with(&["--max-concurrent", "2", "--max-queue", "64"])
}

fn start_server_with(extra: &[&str]) -> Server {
    let data = sigma_common::data();
    let mut child = Command::new(sigmaforge_e2e::sigmaforge_bin())
        .args(["serve", "--plugins", &sigma_common::plugin(), "--data", data.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sigmaforge serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("listening on ") {
                let url = rest.split_whitespace().next().unwrap().to_string();
                let _ = tx.send(url);
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(120)).expect("the server did not say where it listens within 120 s");
    Server { child, base }
}

fn detection_only(rule: &str) -> String {
    // The reference's own logsource + detection: what a perfect model would write.
    let mut keep = false;
    let mut out = String::new();
    for line in rule.lines() {
        if !line.starts_with(' ') && !line.starts_with('\t') && !line.trim().is_empty() {
            keep = line.starts_with("logsource:") || line.starts_with("detection:");
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn hostile() -> Vec<String> {
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n".to_string();
    let deep = format!("detection:\n  sel: {}x{}\n  condition: sel\n", "[".repeat(10_000), "]".repeat(10_000));
    let regex =
        "logsource:\n  category: process_creation\n  product: windows\ndetection:\n  sel:\n    CommandLine|re: '(a{1000}){1000}'\n  condition: sel\n"
            .to_string();
    vec![bomb, deep, regex, "not yaml at all: [".into(), "x".repeat(1 << 20)]
}

#[test]
fn concurrent_clients_get_every_score_once_with_hostile_completions_mixed_in() {
    let (task, rule) = sigma_common::first_train_task();
    let good = detection_only(&rule);
    let server = start_server();
    let url = format!("{}/v1/score", server.base);
    let deadline = Instant::now() + Duration::from_secs(240);

    let clients = 6;
    let batches_per_client = 3;
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (url, task, good) = (url.clone(), task.clone(), good.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(120))).build().into();
                let mut seen = Vec::new();
                for b in 0..batches_per_client {
                    let mut items = Vec::new();
                    for (h, text) in hostile().into_iter().enumerate() {
                        items.push(json!({"id": format!("{c}-{b}-h{h}"), "task": task, "completion": text}));
                        items.push(json!({"id": format!("{c}-{b}-g{h}"), "task": task, "completion": good}));
                    }
                    let mut resp = agent.post(&url).send_json(&items).expect("scoring request");
                    assert_eq!(resp.status().as_u16(), 200);
                    let body: Value = resp.body_mut().with_config().limit(64 << 20).read_json().unwrap();
                    let results = body.as_array().expect("an array of scores").clone();
                    assert_eq!(results.len(), items.len(), "one score per item");
                    for (item, result) in items.iter().zip(&results) {
                        assert_eq!(item["id"], result["id"], "scores come back in request order");
                        let total = result["total"].as_f64().unwrap();
                        assert!((0.0..=1.1 + 1e-9).contains(&total), "{result}");
                        if item["id"].as_str().unwrap().contains("-g") {
                            assert!((total - 1.1).abs() < 1e-6, "the reference's own detection scores 1.1: {result}");
                            assert!(result["error"].is_null(), "{result}");
                        } else {
                            assert!(total < 0.5, "a hostile completion scores low: {result}");
                        }
                        seen.push(result["id"].as_str().unwrap().to_string());
                    }
                }
                seen
            })
        })
        .collect();
    let mut all: Vec<String> = handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect();
    assert!(Instant::now() < deadline, "the load test ran past its time bound");
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "no score was duplicated");
    assert_eq!(n, clients * batches_per_client * 10, "no score was lost");

    let health: Value = ureq::get(&format!("{}/health", server.base)).call().unwrap().body_mut().read_json().unwrap();
    assert_eq!(health["status"], "ok");
    let names: Vec<&str> = health["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["yaml_valid", "logsource_correct", "iou"]);
    let metrics = ureq::get(&format!("{}/metrics", server.base)).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(metrics.contains(&format!("sigmaforge_completions_scored_total {n}")), "{metrics}");

    // Graceful shutdown on SIGTERM.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stop = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "serve exits 0 after SIGTERM, got {status}");
            break;
        }
        assert!(stop.elapsed() < Duration::from_secs(20), "serve did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resident and peak memory of a process in MiB, from /proc (Linux).
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()).unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// 3,008 scoring requests from 32 concurrent clients, while 300 slow clients (100 idle, 100
/// that stop inside a request head, 100 that stop inside a body) hold connections, on loopback.
/// Records p50/p99 latency, throughput and the server's memory (printed on stderr; the figures
/// are in BENCHMARKS.md), and checks that every request is answered and that the slow clients
/// are closed within their timeouts. `SIGMAFORGE_SERVE_BASELINE=1` runs it against a binary
/// without the timeout flags (for the before/after figures) and only reports.
#[test]
fn load_with_slow_clients_is_answered_and_slow_clients_are_closed() {
    use std::io::{Read, Write};
    let baseline = std::env::var_os("SIGMAFORGE_SERVE_BASELINE").is_some();
    let timeouts = ["--header-timeout", "2", "--body-timeout", "2"];
    let server = start_server_with(if baseline { &[] } else { &timeouts });
    let (task, rule) = sigma_common::first_train_task();
    let good = detection_only(&rule);
    let addr = server.base.trim_start_matches("http://").to_string();
    let pid = server.child.id();
    let rss_start = rss_mib(pid).0;

    let slow_started = Instant::now();
    let mut slow: Vec<(&str, std::net::TcpStream)> = Vec::new();
    for i in 0..300 {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect a slow client");
        let kind = match i % 3 {
            0 => "idle",
            1 => {
                stream.write_all(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Ty").unwrap();
                "partial header"
            }
            _ => {
                stream.write_all(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[{\"task\"").unwrap();
                "partial body"
            }
        };
        slow.push((kind, stream));
    }

    let (clients, per_client) = (32, 94);
    let url = format!("{}/v1/score", server.base);
    let load_started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (url, task, good) = (url.clone(), task.clone(), good.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(60))).build().into();
                let mut latencies = Vec::with_capacity(per_client);
                for r in 0..per_client {
                    let items = json!([{"id": format!("{c}-{r}"), "task": task, "completion": good}]);
                    let sent = Instant::now();
                    let mut resp = agent.post(&url).send_json(&items).expect("scoring request");
                    let body: Value = resp.body_mut().read_json().unwrap();
                    latencies.push(sent.elapsed());
                    assert_eq!(body[0]["id"], format!("{c}-{r}"));
                    assert!((body[0]["total"].as_f64().unwrap() - 1.1).abs() < 1e-6, "{body}");
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect();
    let elapsed = load_started.elapsed();
    let (rss_after, rss_peak) = rss_mib(pid);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1000.0;

    // Each slow client: closed by the server (EOF or reset), and when, within 10 s of opening.
    let mut closed = 0;
    let mut answered_408 = 0;
    let mut last_close = Duration::ZERO;
    for (kind, stream) in &mut slow {
        let left = Duration::from_secs(10).saturating_sub(slow_started.elapsed()).max(Duration::from_millis(10));
        stream.set_read_timeout(Some(left)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let end = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        if end {
            closed += 1;
            last_close = last_close.max(slow_started.elapsed());
        }
        if *kind == "partial body" && got.starts_with(b"HTTP/1.1 408") {
            answered_408 += 1;
        }
    }
    eprintln!(
        "serve load: {} requests, {clients} concurrent clients, 300 slow clients: p50 {:.1} ms, p99 {:.1} ms, {:.0} req/s; \
         server RSS {rss_start:.0} MiB before, {rss_after:.0} MiB after, peak {rss_peak:.0} MiB; \
         slow clients closed: {closed}/300 (last at {:.1} s), 408 answers: {answered_408}/100",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        last_close.as_secs_f64()
    );
    assert_eq!(latencies.len(), clients * per_client, "every request was answered");
    if !baseline {
        assert_eq!(closed, 300, "every slow client is closed within 10 s (header and body timeouts of 2 s)");
        assert_eq!(answered_408, 100, "a stalled body gets 408");
    }
}

#[test]
fn malformed_requests_are_refused_with_a_reason() {
    let server = start_server();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent.post(&format!("{}/v1/score", server.base)).send_json(json!([{"task": "x"}])).unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.body_mut().read_json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("completion"), "{body}");
    // An unknown task id is scored 0 with an error naming it, not a crash.
    let mut resp = agent.post(&format!("{}/v1/score", server.base)).send_json(json!([{"task": "no-such-task", "completion": "x"}])).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(body[0]["total"], 0.0);
    assert!(body[0]["error"].as_str().unwrap_or_default().contains("no-such-task"), "{body}");
}

/// The Python code blocks of the section `heading` (e.g. "### TRL") of docs/serve.md.
fn docs_python(heading: &str) -> String {
    let docs = std::fs::read_to_string(sigmaforge_e2e::workspace_root().join("docs/serve.md")).unwrap();
    let section = docs.split(&format!("\n{heading}")).nth(1).unwrap_or_else(|| panic!("docs/serve.md has no section {heading}"));
    let section = section.split("\n### ").next().unwrap();
    let code: Vec<&str> = section.split("```python\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert!(!code.is_empty(), "section {heading} of docs/serve.md has no python block");
    code.concat()
}

/// The TRL and verl snippets of docs/serve.md, run as written (only the server address changed)
/// against the real server: they send the request the API expects and read back the scores
/// that `sigmaforge score` gives the same completions. Python's `requests` is stood in for by a
/// small urllib shim, so the test needs python3 only.
#[test]
fn the_trl_and_verl_snippets_in_the_docs_work_against_the_server() {
    let (task, rule) = sigma_common::first_train_task();
    let completions = [detection_only(&rule), "not a rule: [".to_string(), rule.replace("product: windows", "product: linux")];
    let server = start_server();
    let dir = sigmaforge_e2e::scratch_dir("serve-snippets");
    std::fs::write(
        dir.join("requests.py"),
        r#"# Stand-in for the `requests` package: the two calls the snippets make.
import json, urllib.request
class Response:
    def __init__(self, body): self.body = body
    def json(self): return json.loads(self.body)
def post(url, json=None, timeout=None):
    data = __import__("json").dumps(json).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return Response(r.read())
class Session:
    def post(self, url, json=None, timeout=None): return post(url, json=json, timeout=timeout)
"#,
    )
    .unwrap();
    let address = |code: String| code.replace("http://127.0.0.1:8765", &server.base);
    let driver = format!(
        "import json, sys\n\
         # What the TRL snippet's last line needs, as stand-ins.\n\
         GRPOTrainer = lambda **kw: kw; model = grpo_args = dataset = None\n\
         {trl}\n{verl}\n\
         tasks, completions = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n\
         trl = sigma_reward(prompts=[None] * len(tasks), completions=completions, task_id=tasks)\n\
         # Conversational datasets give message lists; the snippet takes the last message.\n\
         trl_chat = sigma_reward(prompts=None, completions=[[{{'role': 'assistant', 'content': c}}] for c in completions], task_id=tasks)\n\
         verl = [compute_score('sigmahq', c, t) for t, c in zip(tasks, completions)]\n\
         print(json.dumps({{'trl': trl, 'trl_chat': trl_chat, 'verl': verl}}))\n",
        trl = address(docs_python("### TRL")),
        verl = address(docs_python("### verl")),
    );
    std::fs::write(dir.join("driver.py"), driver).unwrap();
    let tasks = vec![task.clone(); completions.len()];
    let out = Command::new("python3")
        .arg(dir.join("driver.py"))
        .arg(serde_json::to_string(&tasks).unwrap())
        .arg(serde_json::to_string(&completions).unwrap())
        .env("PYTHONPATH", &dir)
        .output()
        .expect("python3 is needed to run the documentation's Python snippets");
    assert!(out.status.success(), "the snippets failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The same completions through `sigmaforge score --batch`.
    let batch: String = completions.iter().map(|c| format!("{}\n", json!({"task": task, "completion": c}))).collect();
    let data = sigma_common::data();
    let (code, stdout, err) = sigma_common::sigmaforge(
        &["score", "--plugins", &sigma_common::plugin(), "--data", data.to_str().unwrap(), "--batch", "-", "--json"],
        Some(&batch),
    );
    assert_eq!(code, 0, "{err}");
    let want: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(want.len(), 3);
    assert!((want[0]["total"].as_f64().unwrap() - 1.1).abs() < 1e-9, "the reference's detection scores 1.1: {}", want[0]);
    for (i, w) in want.iter().enumerate() {
        let total = w["total"].as_f64().unwrap();
        for key in ["trl", "trl_chat"] {
            assert!((got[key][i].as_f64().unwrap() - total).abs() < 1e-9, "{key} sample {i}: {} vs {w}", got[key][i]);
        }
        let verl = &got["verl"][i];
        assert!((verl["score"].as_f64().unwrap() - total).abs() < 1e-9, "verl sample {i}: {verl} vs {w}");
        for c in w["components"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            assert!((verl[name].as_f64().unwrap() - c["value"].as_f64().unwrap()).abs() < 1e-9, "verl sample {i} {name}: {verl} vs {w}");
        }
    }
}
