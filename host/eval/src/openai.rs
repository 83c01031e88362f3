//! An OpenAI-compatible chat-completions server as a policy: POST `{base_url}/chat/completions`.
//!
//! Each request is retried on what a busy or flaky server does — timeouts, connection errors,
//! 429 and 5xx, empty or non-JSON bodies, bodies without `choices[0].message` — with exponential
//! backoff and jitter (honouring `Retry-After` on 429/503). Other 4xx (bad key, unknown model)
//! are not retried: a retry cannot fix them. With tools, a reply's `tool_calls` are run through
//! the [`Toolbox`], answered with `role: tool` messages, and the model is asked again, up to
//! `max_turns` tool turns; the next request goes without `tools` so the model must answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigmaforge_runtime::Message;

use crate::policy::{Completion, Failure, Outcome, Policy, Trace, Usage};
use sigmaforge_reward::Toolbox;

/// Client settings (the `eval` flags).
#[derive(Debug, Clone)]
pub struct OpenAiOptions {
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer <key>`; None sends no header (local servers).
    pub api_key: Option<String>,
    pub concurrency: usize,
    /// Per request, connection to last body byte.
    pub timeout: Duration,
    /// Retries after the first attempt of each request.
    pub retries: u32,
    /// The first retry waits about this long; each later one twice as long (±50% jitter).
    pub backoff: Duration,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Seeds the backoff jitter.
    pub seed: u64,
}

/// The longest a single backoff waits, whatever the attempt number or `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct OpenAiPolicy {
    opts: OpenAiOptions,
    agent: ureq::Agent,
    url: String,
    jitter_counter: AtomicU64,
}

/// Why one attempt failed, and whether another attempt may help.
struct AttemptError {
    message: String,
    retryable: bool,
    /// The server's `Retry-After`, when it sent one.
    retry_after: Option<Duration>,
}

impl AttemptError {
    fn retry(message: String) -> Self {
        AttemptError { message, retryable: true, retry_after: None }
    }
}

/// One successful chat-completions reply.
struct Reply {
    message: Value,
    usage: Usage,
}

impl OpenAiPolicy {
    pub fn new(opts: OpenAiOptions) -> OpenAiPolicy {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            // Error statuses are read like any reply, so their body can be reported.
            .http_status_as_error(false)
            .user_agent(concat!("sigmaforge/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::new_with_config(config);
        let url = format!("{}/chat/completions", opts.base_url.trim_end_matches('/'));
        OpenAiPolicy { opts, agent, url, jitter_counter: AtomicU64::new(0) }
    }

    pub fn options(&self) -> &OpenAiOptions {
        &self.opts
    }

    fn request_body(&self, messages: &[Value], tools: Option<&Value>) -> Value {
        let mut body = json!({ "model": self.opts.model, "messages": messages });
        if let Some(t) = self.opts.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.opts.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(tools) = tools {
            body["tools"] = tools.clone();
        }
        body
    }

    /// One HTTP attempt.
    fn attempt(&self, body: &Value) -> Result<Reply, AttemptError> {
        let mut req = self.agent.post(&self.url).header("Content-Type", "application/json");
        if let Some(key) = &self.opts.api_key {
            req = req.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = match req.send(body.to_string()) {
            Ok(r) => r,
            Err(e) => return Err(transport_error(e, self.opts.timeout)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let text = match response.body_mut().with_config().limit(64 << 20).read_to_string() {
            Ok(t) => t,
            Err(e) => return Err(transport_error(e, self.opts.timeout)),
        };
        if !(200..300).contains(&status) {
            let retryable = status == 429 || status >= 500 || status == 408;
            return Err(AttemptError { message: format!("HTTP {status}: {}", snippet(&text)), retryable, retry_after });
        }
        if text.trim().is_empty() {
            return Err(AttemptError::retry(format!("HTTP {status} with an empty body")));
        }
        let json: Value =
            serde_json::from_str(&text).map_err(|e| AttemptError::retry(format!("HTTP {status}: the body is not JSON ({e}): {}", snippet(&text))))?;
        let Some(message) = json.pointer("/choices/0/message").filter(|m| m.is_object()) else {
            return Err(AttemptError::retry(format!("HTTP {status}: the reply has no choices[0].message: {}", snippet(&text))));
        };
        let count = |k: &str| json.pointer(&format!("/usage/{k}")).and_then(Value::as_u64).unwrap_or(0);
        Ok(Reply { message: message.clone(), usage: Usage { tokens_in: count("prompt_tokens"), tokens_out: count("completion_tokens") } })
    }

    /// Backoff before retry `n` (1-based): backoff·2^(n-1), jittered to 50–150%.
    fn backoff(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let base = self.opts.backoff.as_secs_f64() * 2f64.powi(n.saturating_sub(1).min(20) as i32);
        let k = self.jitter_counter.fetch_add(1, Ordering::Relaxed);
        let jitter = 0.5 + unit_float(self.opts.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let wait = Duration::from_secs_f64(base * jitter).max(retry_after.unwrap_or_default());
        wait.min(MAX_BACKOFF)
    }

    /// One request with its retries. Err: the last error, with every attempt's reason.
    fn request(&self, body: &Value, log: &mut SampleLog) -> Result<Reply, String> {
        let mut last = String::new();
        for attempt in 0..=self.opts.retries {
            if attempt > 0 {
                std::thread::sleep(self.backoff(attempt, log.retry_after.take()));
            }
            log.attempts += 1;
            match self.attempt(body) {
                Ok(reply) => {
                    log.usage.add(reply.usage);
                    return Ok(reply);
                }
                Err(e) => {
                    log.errors.push(format!("attempt {}: {}", log.attempts, e.message));
                    last = e.message;
                    log.retry_after = e.retry_after;
                    if !e.retryable {
                        return Err(format!("{last} (not retried)"));
                    }
                }
            }
        }
        Err(format!("{last} (after {} attempts)", self.opts.retries + 1))
    }
}

/// What a sample did so far, over its requests.
#[derive(Default)]
struct SampleLog {
    attempts: u32,
    errors: Vec<String>,
    usage: Usage,
    retry_after: Option<Duration>,
    tool_calls: u32,
}

impl SampleLog {
    /// The sample's record once it ends (answered or given up) `start` after its first request.
    fn into_trace(self, start: Instant, transcript: Option<Vec<Value>>) -> Trace {
        Trace {
            usage: self.usage,
            latency_s: start.elapsed().as_secs_f64(),
            attempts: self.attempts,
            attempt_errors: self.errors,
            tool_calls: self.tool_calls,
            transcript,
        }
    }
}

impl Policy for OpenAiPolicy {
    fn model(&self) -> &str {
        &self.opts.model
    }

    fn spec(&self) -> String {
        format!("openai:{}#{}", self.opts.base_url, self.opts.model)
    }

    fn supports_tools(&self) -> bool {
        true
    }

    fn concurrency(&self) -> usize {
        self.opts.concurrency.max(1)
    }

    fn complete(&self, messages: &[Message], tools: Option<&Toolbox>) -> Outcome {
        let start = Instant::now();
        let tools = tools.filter(|t| !t.is_empty());
        let mut conversation: Vec<Value> = messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
        let tool_field = tools.map(Toolbox::openai_tools);
        let mut log = SampleLog::default();
        let mut turn = 0;
        loop {
            let offer = match (tools, &tool_field) {
                (Some(tb), Some(field)) if turn < tb.max_turns => Some(field),
                _ => None,
            };
            let reply = match self.request(&self.request_body(&conversation, offer), &mut log) {
                Ok(r) => r,
                Err(reason) => return Err(Failure { reason, trace: log.into_trace(start, tools.map(|_| conversation)) }),
            };
            let calls = reply.message.get("tool_calls").and_then(Value::as_array).filter(|c| !c.is_empty()).cloned();
            match (calls, tools) {
                (Some(calls), Some(tb)) if offer.is_some() => {
                    conversation.push(reply.message.clone());
                    for (i, call) in calls.iter().enumerate() {
                        log.tool_calls += 1;
                        let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or("");
                        // Arguments are a JSON string in the OpenAI format; tolerate an object.
                        let arguments = match call.pointer("/function/arguments") {
                            Some(Value::String(s)) => s.clone(),
                            Some(Value::Null) | None => String::new(),
                            Some(other) => other.to_string(),
                        };
                        let result = if name.is_empty() { "error: the tool call names no function".to_string() } else { tb.run(name, &arguments) };
                        let id = call.get("id").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("call_{turn}_{i}"));
                        conversation.push(json!({"role": "tool", "tool_call_id": id, "name": name, "content": result}));
                    }
                    turn += 1;
                }
                _ => {
                    let text = reply.message.get("content").and_then(Value::as_str).unwrap_or("").to_string();
                    if tools.is_some() {
                        conversation.push(reply.message);
                    }
                    return Ok(Completion { text, trace: log.into_trace(start, tools.map(|_| conversation)) });
                }
            }
        }
    }
}

fn transport_error(e: ureq::Error, timeout: Duration) -> AttemptError {
    let message = match &e {
        ureq::Error::Timeout(_) => format!("timed out after {:.1}s", timeout.as_secs_f64()),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => format!("timed out after {:.1}s", timeout.as_secs_f64()),
        other => format!("request failed: {other}"),
    };
    // A malformed URL or TLS setup error will not heal; everything else (refused or reset
    // connections, timeouts, truncated bodies) may.
    let retryable = !matches!(e, ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::RequireHttpsOnly(_) | ureq::Error::TlsRequired);
    AttemptError { message, retryable, retry_after: None }
}

/// The start of a body, on one line, for error messages.
fn snippet(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return "(empty body)".to_string();
    }
    if flat.chars().count() > 200 { format!("{}…", flat.chars().take(200).collect::<String>()) } else { flat }
}

/// A float in [0, 1) from a 64-bit seed (splitmix64).
fn unit_float(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff_ms: u64) -> OpenAiPolicy {
        OpenAiPolicy::new(OpenAiOptions {
            base_url: "http://127.0.0.1:9/v1".into(),
            model: "m".into(),
            api_key: None,
            concurrency: 1,
            timeout: Duration::from_secs(1),
            retries: 3,
            backoff: Duration::from_millis(backoff_ms),
            temperature: Some(0.0),
            max_tokens: Some(64),
            seed: 1,
        })
    }

    #[test]
    fn backoff_doubles_with_jitter_and_respects_retry_after_and_cap() {
        let p = policy(100);
        for n in 1..=4u32 {
            let base = 0.1 * 2f64.powi(n as i32 - 1);
            let w = p.backoff(n, None).as_secs_f64();
            assert!(w >= base * 0.5 && w < base * 1.5, "retry {n}: {w}");
        }
        assert!(p.backoff(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(p.backoff(1, Some(Duration::from_secs(3600))), MAX_BACKOFF);
        assert_eq!(p.backoff(60, None), MAX_BACKOFF);
    }

    #[test]
    fn request_body_has_the_options_and_tools_only_when_offered() {
        let p = policy(1);
        let msgs = vec![json!({"role": "user", "content": "hi"})];
        let b = p.request_body(&msgs, None);
        assert_eq!(b["model"], "m");
        assert_eq!(b["max_tokens"], 64);
        assert_eq!(b["temperature"], 0.0);
        assert!(b.get("tools").is_none());
        let b = p.request_body(&msgs, Some(&json!([{"type": "function"}])));
        assert_eq!(b["tools"][0]["type"], "function");
    }

    #[test]
    fn refused_connection_fails_after_every_retry_with_reasons() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut p = policy(1);
        p.url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let out = p.complete(&[Message { role: "user".into(), content: "x".into() }], None);
        let f = out.unwrap_err();
        assert_eq!(f.trace.attempts, 4);
        assert_eq!(f.trace.attempt_errors.len(), 4);
        assert!(f.reason.contains("after 4 attempts"), "{}", f.reason);
    }
}
