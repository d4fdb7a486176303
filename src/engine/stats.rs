//! Counters the engine publishes for the HTTP side (admission control, health, metrics): counts only.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests submitted and not yet admitted (including ones the engine thread has not seen yet).
    pub queued_requests: AtomicUsize,
    pub waiting_sequences: AtomicUsize,
    pub running_sequences: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub kv_blocks_free: AtomicUsize,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub shutting_down: AtomicBool,
}
