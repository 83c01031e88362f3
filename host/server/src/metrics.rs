//! Counters for `/metrics`, rendered in the Prometheus text exposition format.
//!
//! A handful of atomics is all a stateless scorer needs; a metrics crate would add a registry
//! and dependencies for the same few lines of text.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sigmaforge_runtime::ScoreResult;

/// Upper bounds (seconds) of the batch-latency histogram buckets.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub bad_requests: AtomicU64,
    pub rejected: AtomicU64,
    pub timeouts: AtomicU64,
    /// Scoring work stopped early because its client had its 504 or went away.
    pub cancelled: AtomicU64,
    /// Requests whose body did not arrive within the body read timeout.
    pub slow_bodies: AtomicU64,
    pub in_flight: AtomicUsize,
    completions: AtomicU64,
    completion_errors: AtomicU64,
    latency: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    total: u64,
    sum_seconds: f64,
}

impl Metrics {
    /// Records one scored batch.
    pub fn record_batch(&self, results: &[ScoreResult], elapsed: Duration) {
        self.completions.fetch_add(results.len() as u64, Ordering::Relaxed);
        let errors = results.iter().filter(|r| r.error.is_some()).count() as u64;
        self.completion_errors.fetch_add(errors, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.total += 1;
        h.sum_seconds += secs;
    }

    /// The exposition text.
    pub fn render(&self, waiting: usize) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter("sigmaforge_requests_total", "HTTP scoring requests received.", self.requests.load(Ordering::Relaxed));
        counter("sigmaforge_bad_requests_total", "Requests refused as malformed.", self.bad_requests.load(Ordering::Relaxed));
        counter("sigmaforge_rejected_total", "Requests refused because the queue was full.", self.rejected.load(Ordering::Relaxed));
        counter("sigmaforge_timeouts_total", "Requests that ran past the request timeout.", self.timeouts.load(Ordering::Relaxed));
        counter(
            "sigmaforge_cancelled_total",
            "Scoring stopped early because the client got its 504 or went away.",
            self.cancelled.load(Ordering::Relaxed),
        );
        counter(
            "sigmaforge_slow_bodies_total",
            "Requests whose body did not arrive within the body read timeout (408).",
            self.slow_bodies.load(Ordering::Relaxed),
        );
        counter("sigmaforge_completions_scored_total", "Completions scored.", self.completions.load(Ordering::Relaxed));
        counter(
            "sigmaforge_completion_errors_total",
            "Completions that scored 0 because the plugin failed (trap, timeout, memory cap, invalid output).",
            self.completion_errors.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP sigmaforge_in_flight_batches Batches being scored now.\n# TYPE sigmaforge_in_flight_batches gauge\nsigmaforge_in_flight_batches {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sigmaforge_waiting_batches Batches waiting for a scoring slot.\n# TYPE sigmaforge_waiting_batches gauge\nsigmaforge_waiting_batches {waiting}"
        );
        let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let name = "sigmaforge_batch_seconds";
        let _ = writeln!(out, "# HELP {name} Time to score one batch, queueing included.\n# TYPE {name} histogram");
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.total);
        let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
        let _ = writeln!(out, "{name}_count {}", h.total);
        out
    }
}
