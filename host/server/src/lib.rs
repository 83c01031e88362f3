//! `sigmaforge serve`: a stateless HTTP reward server.
//!
//! Any trainer (TRL, verl, OpenRLHF, or our own) can score completions through SigmaForge's
//! sandboxed plugins without linking Rust: `POST /v1/score` takes the same objects as
//! `sigmaforge score --batch` and returns one score object per item, in order. The server keeps
//! no per-client state, so replicas can sit behind any load balancer.
//!
//! Endpoints:
//! - `POST /v1/score`: body a JSON array (or `{"items": [...]}`) of
//!   `{"task": id | "reference": rule text, "completion": text, "id"?: any}`; answer a JSON
//!   array of `{"id"?, "task", "total", "components": [...], "error"}`. Both are the
//!   [`sigmaforge_runtime::wire`] types, less `reference_file` (the server reads no files).
//! - `POST /openrlhf`: OpenRLHF's remote reward protocol (`--remote_rm_url`):
//!   `{"query": [...], "prompts": [...], "labels": [...]}` → `{"rewards": [...], "scores": [...]}`;
//!   `labels` are task ids and the completion is `query` with its prompt prefix removed.
//! - `GET /health`: `{"status": "ok", "plugin": ..., "components": [...]}`.
//! - `GET /metrics`: Prometheus text format.
//!
//! Robustness: scoring runs on blocking threads, at most `max_concurrent` batches at once and at
//! most `max_queue` waiting (then 503 with `Retry-After`); a request that cannot finish within
//! `request_timeout` gets 504, and its scoring stops at the next chunk of
//! [`CANCEL_CHECK_ITEMS`] items (the plugin runtime bounds each call itself, so a stuck plugin
//! cannot hold a worker forever); bodies over `max_body_bytes` (64 MiB by default) get 413, bodies
//! that do not arrive within `body_timeout` get 408; malformed JSON gets 400 naming the item and
//! the problem. Connections are capped and slow clients closed (see [`connections`]). Shutdown is
//! graceful: in-flight requests finish.
//!
//! Why axum + tokio: tokio is the project's concurrency runtime (docs/architecture.md) and axum is its most
//! widely used HTTP layer; bounded concurrency, body limits and graceful shutdown come with it.

pub mod connections;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sigmaforge_runtime::{ReferenceFiles, ScoreAnswer, ScoreRequest, ScoreResult, TaskRef};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use connections::{ConnectionLimits, serve};
pub use metrics::Metrics;

/// A batch is scored this many items at a time, so that a request whose client has gone (504,
/// or disconnected) stops after the chunk in progress instead of scoring the whole batch.
pub const CANCEL_CHECK_ITEMS: usize = 64;

/// What the server scores with: a task plugin (the reward crate implements it for
/// [`TaskPlugin`](sigmaforge_runtime::TaskPlugin)); tests use fakes.
pub use sigmaforge_reward::Scorer;

/// Limits of one server process.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Batches scored at once (each batch is itself scored in parallel by the plugin's pool).
    pub max_concurrent: usize,
    /// Batches allowed to wait for a slot; more are refused with 503.
    pub max_queue: usize,
    /// Time from arrival to answer before the client gets 504.
    pub request_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most items in one batch.
    pub max_batch: usize,
    /// Time a client has to send a request's head (also how long an idle connection stays open).
    pub header_timeout: Duration,
    /// Time a client has to send a request's whole body once its head arrived (else 408).
    pub body_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_concurrent: 4,
            max_queue: 64,
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 64 << 20,
            max_batch: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

impl ServerOptions {
    /// The limits the accept loop ([`serve`]) enforces.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits { header_timeout: self.header_timeout, max_connections: self.max_connections }
    }
}

struct AppState {
    scorer: Arc<dyn Scorer>,
    options: ServerOptions,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    metrics: Metrics,
}

/// The HTTP routes, ready to serve.
pub fn router(scorer: Arc<dyn Scorer>, options: ServerOptions) -> Router {
    let state = Arc::new(AppState {
        slots: Arc::new(Semaphore::new(options.max_concurrent.max(1))),
        waiting: AtomicUsize::new(0),
        metrics: Metrics::default(),
        scorer,
        options: options.clone(),
    });
    Router::new()
        .route("/v1/score", post(score))
        .route("/score", post(score))
        .route("/openrlhf", post(openrlhf))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::from_fn_with_state(state.clone(), read_body_in_time))
        .with_state(state)
}

/// Reads the whole request body before the handler runs, within `body_timeout` (408 otherwise,
/// and the connection is closed) and `max_body_bytes` (413).
async fn read_body_in_time(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let limit = state.options.max_body_bytes;
    let deadline = state.options.body_timeout;
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit));
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(collected)) => next.run(Request::from_parts(parts, Body::from(collected.to_bytes()))).await,
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is over the limit of {limit} bytes")).into_response()
        }
        Ok(Err(err)) => ApiError(StatusCode::BAD_REQUEST, format!("could not read the request body: {err}")).into_response(),
        Err(_) => {
            state.metrics.slow_bodies.fetch_add(1, Ordering::Relaxed);
            let mut response = ApiError(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {deadline:?}")).into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Binds `addr` (port 0 picks a free port) and returns the listener and the bound address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// An error answer: status plus `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, axum::Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Decrements the waiting count when a queued request stops waiting, however it stops.
struct WaitingGuard(Arc<AppState>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The items of a `/v1/score` body: an array, or `{"items": [...]}`, of [`ScoreRequest`]s.
fn parse_items(body: &[u8], max_batch: usize) -> Result<Vec<ScoreRequest>, ApiError> {
    let bad = |msg: String| ApiError(StatusCode::BAD_REQUEST, msg);
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(format!("request body is not JSON: {e}")))?;
    let list = match value {
        Value::Array(list) => list,
        Value::Object(mut obj) => match obj.remove("items") {
            Some(Value::Array(list)) => list,
            _ => return Err(bad("expected a JSON array of items, or an object with an \"items\" array".into())),
        },
        _ => return Err(bad("expected a JSON array of items, or an object with an \"items\" array".into())),
    };
    if list.len() > max_batch {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("batch of {} items is over the limit of {max_batch}", list.len())));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, v)| ScoreRequest::from_value(v, ReferenceFiles::Refused).map_err(|e| bad(format!("item {i}: {e}"))))
        .collect()
}

/// Raised when the request's future ends (answered, timed out, or dropped because the client
/// went away), which tells its scoring thread to stop at the next chunk.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Scores `items` [`CANCEL_CHECK_ITEMS`] at a time; `None` when `cancelled` was raised first.
fn score_until_cancelled(scorer: &dyn Scorer, items: &[(TaskRef, String)], cancelled: &AtomicBool) -> Option<Vec<ScoreResult>> {
    let mut results = Vec::with_capacity(items.len());
    for chunk in items.chunks(CANCEL_CHECK_ITEMS) {
        if cancelled.load(Ordering::SeqCst) {
            return None;
        }
        results.extend(sigmaforge_reward::score_checked(scorer, chunk));
    }
    Some(results)
}

/// Waits for a scoring slot (bounded queue), scores on a blocking thread, within the timeout.
async fn score_items(state: &Arc<AppState>, items: Vec<(TaskRef, String)>) -> Result<Vec<ScoreResult>, ApiError> {
    let started = Instant::now();
    let n = items.len();
    let deadline = state.options.request_timeout;
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancelled.clone());
    let work = async {
        let permit = match state.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if state.waiting.fetch_add(1, Ordering::SeqCst) >= state.options.max_queue {
                    state.waiting.fetch_sub(1, Ordering::SeqCst);
                    state.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "server busy: scoring queue is full, retry later".into()));
                }
                // Counted as waiting until this future ends, also when the timeout drops it.
                let _waiting = WaitingGuard(state.clone());
                state.slots.clone().acquire_owned().await.map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down".into()))?
            }
        };
        state.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let worker_state = state.clone();
        let cancelled = cancelled.clone();
        let scored = tokio::task::spawn_blocking(move || {
            // The slot and the in-flight count are released when scoring ends; once the client
            // has its 504 (or is gone) that is at the end of the chunk in progress.
            let _permit = permit;
            let results = score_until_cancelled(&*worker_state.scorer, &items, &cancelled);
            worker_state.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            if results.is_none() {
                worker_state.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            results
        })
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("scoring worker failed: {e}")))?;
        scored.ok_or_else(|| ApiError(StatusCode::GATEWAY_TIMEOUT, "scoring was cancelled".into()))
    };
    let result = match tokio::time::timeout(deadline, work).await {
        Ok(r) => r,
        Err(_) => {
            state.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
            Err(ApiError(StatusCode::GATEWAY_TIMEOUT, format!("scoring took longer than the request timeout of {deadline:?}")))
        }
    }?;
    if result.len() != n {
        return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("plugin returned {} results for {n} items", result.len())));
    }
    state.metrics.record_batch(&result, started.elapsed());
    Ok(result)
}

async fn score(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let items = match parse_items(&body, state.options.max_batch) {
        Ok(items) => items,
        Err(e) => {
            state.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
            return e.into_response();
        }
    };
    // Reference files were refused while parsing, so every item has a task ref.
    let work: Vec<(TaskRef, String)> =
        items.iter().map(|it| (it.target.task_ref().expect("no reference_file reaches the server"), it.completion.clone())).collect();
    match score_items(&state, work).await {
        Ok(results) => {
            let out: Vec<ScoreAnswer> =
                items.iter().zip(&results).map(|(it, result)| ScoreAnswer { id: it.id.as_ref(), task: it.target.label(), result }).collect();
            axum::Json(out).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn openrlhf(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let parsed = (|| -> Result<Vec<(TaskRef, String)>, ApiError> {
        let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
        let v: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("request body is not JSON: {e}")))?;
        let strings = |key: &str, required: bool| -> Result<Vec<String>, ApiError> {
            match v.get(key) {
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x.as_str().map(str::to_string).ok_or_else(|| bad(format!("\"{key}\"[{i}] must be a string"))))
                    .collect(),
                None if !required => Ok(Vec::new()),
                _ => Err(bad(format!("\"{key}\" must be an array of strings"))),
            }
        };
        let queries = strings("query", true)?;
        let prompts = strings("prompts", false)?;
        let labels = strings("labels", true)?;
        if labels.len() != queries.len() || (!prompts.is_empty() && prompts.len() != queries.len()) {
            return Err(bad(format!(
                "\"query\" ({}), \"prompts\" ({}) and \"labels\" ({}) must have the same length",
                queries.len(),
                prompts.len(),
                labels.len()
            )));
        }
        if queries.len() > state.options.max_batch {
            return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("batch over the limit of {}", state.options.max_batch)));
        }
        Ok(queries
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                // OpenRLHF sends prompt + response as `query`; the reward only sees the response.
                let completion = match prompts.get(i) {
                    Some(p) if q.starts_with(p.as_str()) => q[p.len()..].to_string(),
                    _ => q,
                };
                (TaskRef::Id(labels[i].clone()), completion)
            })
            .collect())
    })();
    let work = match parsed {
        Ok(w) => w,
        Err(e) => {
            state.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
            return e.into_response();
        }
    };
    match score_items(&state, work).await {
        Ok(results) => {
            let rewards: Vec<f64> = results.iter().map(|r| r.total).collect();
            axum::Json(json!({ "rewards": rewards, "scores": rewards })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let components: Vec<Value> = state.scorer.components().into_iter().map(|(name, weight)| json!({ "name": name, "weight": weight })).collect();
    axum::Json(json!({
        "status": "ok",
        "plugin": state.scorer.name(),
        "components": components,
        "in_flight": state.metrics.in_flight.load(Ordering::Relaxed),
        "waiting": state.waiting.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(state.waiting.load(Ordering::Relaxed));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests;
