//! Counters the engine publishes for the HTTP side (admission control, health, metrics): counts and
//! timings only, and the latency buckets the metrics use.

use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

#[derive(Debug)]
pub struct EngineStats {
    /// Requests submitted and not yet admitted (including ones the engine thread has not seen yet).
    pub queued_requests: AtomicUsize,
    pub waiting_sequences: AtomicUsize,
    pub running_sequences: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub kv_blocks_free: AtomicUsize,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    /// Duration of each step (batch assembly, forward pass, sampling, detokenization, events).
    pub step_seconds: Histogram,
    /// Tokens run through the model (prompt and decode).
    pub batch_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Prefix cache: prompt tokens looked up / found cached, blocks held, evictions (for room) and
    /// expirations (TTL).
    pub prefix_queried_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub prefix_cached_blocks: AtomicUsize,
    pub prefix_evictions: AtomicU64,
    pub prefix_expirations: AtomicU64,
    pub shutting_down: AtomicBool,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            queued_requests: AtomicUsize::new(0),
            waiting_sequences: AtomicUsize::new(0),
            running_sequences: AtomicUsize::new(0),
            kv_blocks_total: AtomicUsize::new(0),
            kv_blocks_free: AtomicUsize::new(0),
            preemptions: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            step_seconds: latency_histogram(),
            batch_tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            prefix_queried_tokens: AtomicU64::new(0),
            prefix_hit_tokens: AtomicU64::new(0),
            prefix_cached_blocks: AtomicUsize::new(0),
            prefix_evictions: AtomicU64::new(0),
            prefix_expirations: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
        }
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A histogram of seconds with the buckets every latency metric uses (100 µs to 60 s).
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BOUNDS.iter().copied())
}
