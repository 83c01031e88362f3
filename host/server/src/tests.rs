//! HTTP-layer tests with a fake scorer: parsing, ordering, limits, queueing, timeouts, metrics.
//! The end-to-end load test with the real Sigma plugin is in tests/tests/serve_load.rs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigmaforge_runtime::{ComponentScore, ScoreResult, TaskRef};

use super::*;

/// Scores `len(completion) / 100` (capped at 1) after sleeping `delay`; "boom" fails.
struct FakeScorer {
    delay: Duration,
}

impl Scorer for FakeScorer {
    fn score_batch(&self, items: &[(TaskRef, String)]) -> Vec<ScoreResult> {
        std::thread::sleep(self.delay);
        items
            .iter()
            .map(|(task, completion)| {
                if completion == "boom" {
                    return ScoreResult { total: 0.0, components: vec![], error: Some("plugin fake trapped".into()) };
                }
                let label = match task {
                    TaskRef::Id(id) => id.clone(),
                    TaskRef::Reference(r) => format!("ref:{r}"),
                };
                let value = (completion.len() as f64 / 100.0).min(1.0);
                ScoreResult { total: value, components: vec![ComponentScore { name: "len".into(), value, weight: 1.0, detail: label }], error: None }
            })
            .collect()
    }
    fn name(&self) -> String {
        "fake".into()
    }
    fn components(&self) -> Vec<(String, f64)> {
        vec![("len".into(), 1.0)]
    }
}

/// Starts a server on a free loopback port in a background runtime; returns its base URL.
fn start(delay: Duration, options: ServerOptions) -> String {
    start_with(Arc::new(FakeScorer { delay }), options)
}

fn start_with(scorer: Arc<dyn Scorer>, options: ServerOptions) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            tx.send(addr).unwrap();
            let limits = options.connection_limits();
            let app = router(scorer, options);
            serve(listener, app, limits, std::future::pending()).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut resp = agent.post(url).send_json(body).unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    (status, body)
}

#[test]
fn scores_items_in_order_and_echoes_ids() {
    let base = start(Duration::ZERO, ServerOptions::default());
    let (status, body) = post(
        &format!("{base}/v1/score"),
        &json!([
            {"task": "t1", "completion": "x".repeat(50), "id": 7},
            {"reference": "rule", "completion": "boom"},
            {"task": "t2", "completion": "x".repeat(200)},
        ]),
    );
    assert_eq!(status, 200, "{body}");
    let items = body.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["id"], 7);
    assert_eq!(items[0]["task"], "t1");
    assert_eq!(items[0]["total"], 0.5);
    assert_eq!(items[0]["components"][0]["detail"], "t1");
    assert_eq!(items[1]["task"], "reference");
    assert_eq!(items[1]["total"], 0.0);
    assert_eq!(items[1]["error"], "plugin fake trapped");
    assert_eq!(items[2]["total"], 1.0);
    assert!(items[2]["error"].is_null());
}

#[test]
fn malformed_requests_get_400_naming_the_problem() {
    let base = start(Duration::ZERO, ServerOptions::default());
    let url = format!("{base}/v1/score");
    for (body, needle) in [
        (json!({"x": 1}), "items"),
        (json!([{"task": "t"}]), "item 0: missing \"completion\""),
        (json!([{"completion": "c"}]), "missing \"task\""),
        (json!([{"task": "t", "completion": 3}]), "must be a string"),
        (
            json!([{"task": "t", "completion": "c", "extra": 1}]),
            "item 0: unknown key \"extra\" (known: task, reference, reference_file, completion, id)",
        ),
        (json!([{"task": "t", "completion": "c"}, {"task": "t", "reference": "r", "completion": "c"}]), "item 1: give exactly one of"),
        (json!([{"reference_file": "/etc/passwd", "completion": "c"}]), "item 0: \"reference_file\" is for `sigmaforge score --batch` only"),
    ] {
        let (status, resp) = post(&url, &body);
        assert_eq!(status, 400, "{body} -> {resp}");
        assert!(resp["error"].as_str().unwrap().contains(needle), "{resp} should mention {needle}");
    }
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let resp = agent.post(&url).content_type("application/json").send("not json").unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[test]
fn oversized_batches_are_refused() {
    let base = start(Duration::ZERO, ServerOptions { max_batch: 2, ..Default::default() });
    let (status, resp) =
        post(&format!("{base}/v1/score"), &json!([{"task":"a","completion":"1"},{"task":"a","completion":"2"},{"task":"a","completion":"3"}]));
    assert_eq!(status, 413, "{resp}");
}

#[test]
fn slow_scoring_times_out_with_504() {
    let base = start(Duration::from_millis(600), ServerOptions { request_timeout: Duration::from_millis(100), ..Default::default() });
    let (status, resp) = post(&format!("{base}/v1/score"), &json!([{"task": "a", "completion": "x"}]));
    assert_eq!(status, 504, "{resp}");
}

#[test]
fn full_queue_answers_503_and_nothing_is_lost() {
    let base = start(Duration::from_millis(300), ServerOptions { max_concurrent: 1, max_queue: 1, ..Default::default() });
    let url = format!("{base}/v1/score");
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || post(&url, &json!([{"task": format!("t{i}"), "completion": "xx", "id": i}])))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    let busy = results.iter().filter(|(s, _)| *s == 503).count();
    assert!(busy >= 1, "with one slot and a queue of one, some of 6 parallel requests must be refused: {results:?}");
    assert_eq!(ok.len() + busy, 6, "every request is either scored or refused: {results:?}");
    for (_, body) in ok {
        let item = &body.as_array().unwrap()[0];
        assert_eq!(item["task"], format!("t{}", item["id"]), "answers never mix requests: {item}");
    }
}

#[test]
fn openrlhf_protocol_strips_the_prompt() {
    let base = start(Duration::ZERO, ServerOptions::default());
    let (status, body) = post(
        &format!("{base}/openrlhf"),
        &json!({"query": ["PROMPT".to_string() + &"x".repeat(30), "y".repeat(10)], "prompts": ["PROMPT", "other"], "labels": ["a", "b"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rewards"], json!([0.3, 0.1]));
    let (status, _) = post(&format!("{base}/openrlhf"), &json!({"query": ["a"], "labels": []}));
    assert_eq!(status, 400);
}

#[test]
fn health_and_metrics_report_counts() {
    let base = start(Duration::ZERO, ServerOptions::default());
    post(&format!("{base}/v1/score"), &json!([{"task": "a", "completion": "boom"}, {"task": "a", "completion": "ok"}]));
    let health: Value = ureq::get(&format!("{base}/health")).call().unwrap().body_mut().read_json().unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["plugin"], "fake");
    let text = ureq::get(&format!("{base}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(text.contains("sigmaforge_completions_scored_total 2"), "{text}");
    assert!(text.contains("sigmaforge_completion_errors_total 1"), "{text}");
    assert!(text.contains("sigmaforge_batch_seconds_count 1"), "{text}");
}

/// Scores 0.5 per item after sleeping `per_item` for each, counting the items it scored.
struct CountingScorer {
    per_item: Duration,
    scored: Arc<std::sync::atomic::AtomicUsize>,
}

impl Scorer for CountingScorer {
    fn score_batch(&self, items: &[(TaskRef, String)]) -> Vec<ScoreResult> {
        items
            .iter()
            .map(|_| {
                std::thread::sleep(self.per_item);
                self.scored.fetch_add(1, Ordering::SeqCst);
                ScoreResult { total: 0.5, components: vec![], error: None }
            })
            .collect()
    }
    fn name(&self) -> String {
        "counting".into()
    }
    fn components(&self) -> Vec<(String, f64)> {
        vec![]
    }
}

#[test]
fn a_timed_out_request_stops_its_scoring_at_the_next_chunk() {
    let scored = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let scorer = CountingScorer { per_item: Duration::from_millis(5), scored: scored.clone() };
    let options = ServerOptions { request_timeout: Duration::from_millis(100), ..Default::default() };
    let base = start_with(Arc::new(scorer), options);
    let items: Vec<Value> = (0..4 * CANCEL_CHECK_ITEMS).map(|i| json!({"task": "a", "completion": i.to_string()})).collect();
    let (status, resp) = post(&format!("{base}/v1/score"), &Value::Array(items));
    assert_eq!(status, 504, "{resp}");
    // The first chunk takes 64 x 5 ms = 320 ms; give the worker time to stop or go on.
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(3) {
        let health: Value = ureq::get(&format!("{base}/health")).call().unwrap().body_mut().read_json().unwrap();
        if health["in_flight"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(scored.load(Ordering::SeqCst), CANCEL_CHECK_ITEMS, "scoring stops after the chunk that was running at the 504");
    let text = ureq::get(&format!("{base}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(text.contains("sigmaforge_cancelled_total 1"), "{text}");
}

/// Reads from `stream` until the server closes it or `limit` passes; returns what was read and
/// whether it was closed.
fn read_until_closed(stream: &mut std::net::TcpStream, limit: Duration) -> (String, bool) {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is the server closing too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (String::from_utf8_lossy(&got).into_owned(), true),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[test]
fn idle_partial_header_and_partial_body_clients_are_closed_after_their_timeouts() {
    use std::io::Write;
    let options = ServerOptions { header_timeout: Duration::from_millis(300), body_timeout: Duration::from_millis(300), ..Default::default() };
    let base = start(Duration::ZERO, options);
    let addr = base.trim_start_matches("http://").to_string();
    let connect = || std::net::TcpStream::connect(&addr).unwrap();

    let started = Instant::now();
    let mut idle = connect();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5));
    assert!(closed, "an idle connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(250) && started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    let mut partial_header = connect();
    partial_header.write_all(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Ty").unwrap();
    let (_, closed) = read_until_closed(&mut partial_header, Duration::from_secs(5));
    assert!(closed, "a connection with half a request head is closed");

    let mut partial_body = connect();
    partial_body.write_all(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{\"task\"").unwrap();
    let (answer, closed) = read_until_closed(&mut partial_body, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(closed, "a connection whose body stalls is closed after its 408");

    // A client that sends in time is served on the same server.
    let (status, _) = post(&format!("{base}/v1/score"), &json!([{"task": "a", "completion": "x"}]));
    assert_eq!(status, 200);
}

#[test]
fn connections_past_the_cap_wait_until_one_closes() {
    let options = ServerOptions { max_connections: 2, header_timeout: Duration::from_millis(800), ..Default::default() };
    let base = start(Duration::ZERO, options);
    let addr = base.trim_start_matches("http://").to_string();
    let _a = std::net::TcpStream::connect(&addr).unwrap();
    let _b = std::net::TcpStream::connect(&addr).unwrap();
    // Both slots are held by idle clients: a third waits (in the listen backlog) until the
    // header timeout closes one of them.
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let (status, _) = post(&format!("{base}/v1/score"), &json!([{"task": "a", "completion": "x"}]));
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert!(waited >= Duration::from_millis(600), "the third connection was served before a slot freed: {waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}
