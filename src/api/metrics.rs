//! Prometheus metrics (text format): requests by route and status, tokens, TTFT / inter-token / end-to-end
//! latency histograms, engine gauges (queue, running sequences, KV blocks, preemptions), per-layer expert
//! load, and per-key accounting under the key id. Counts and timings only — never content, never a key.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::engine::stats::Histogram;
use crate::engine::EngineHandle;

#[derive(Default, Clone, Copy)]
struct KeyCounters {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// The server's metrics registry (one per server; shared by handlers).
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    keys: Mutex<BTreeMap<String, KeyCounters>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub e2e: Histogram,
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_owned(), status)).or_insert(0) += 1;
        }
    }

    /// Counts tokens of a finished (or streamed-to-the-end) generation, globally and for its key.
    pub fn record_tokens(&self, key: Option<&str>, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Relaxed);
        self.completion_tokens.fetch_add(completion, Relaxed);
        if let (Some(key), Ok(mut m)) = (key, self.keys.lock()) {
            let k = m.entry(key.to_owned()).or_default();
            k.prompt_tokens += prompt;
            k.completion_tokens += completion;
        }
    }

    pub fn record_key_request(&self, key: &str) {
        if let Ok(mut m) = self.keys.lock() {
            m.entry(key.to_owned()).or_default().requests += 1;
        }
    }

    /// The whole page.
    pub fn render(&self, engine: &EngineHandle) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP moeserve_{name} {help}\n# TYPE moeserve_{name} {kind}\nmoeserve_{name} {value}");
        };
        let _ = writeln!(out, "# HELP moeserve_requests_total HTTP requests by route and status.\n# TYPE moeserve_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "moeserve_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        counter(
            &mut out,
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of answered requests.",
            self.prompt_tokens.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "completion_tokens_total",
            "counter",
            "Tokens sent to clients.",
            self.completion_tokens.load(Relaxed) as f64,
        );
        self.ttft.render(
            &mut out,
            "time_to_first_token_seconds",
            "Time from request to first generated token.",
        );
        self.inter_token.render(
            &mut out,
            "inter_token_latency_seconds",
            "Time between generated tokens of a sequence.",
        );
        self.e2e.render(
            &mut out,
            "request_duration_seconds",
            "Time from request to the last token.",
        );
        let s = &engine.stats;
        let total = s.kv_blocks_total.load(Relaxed);
        let free = s.kv_blocks_free.load(Relaxed);
        counter(
            &mut out,
            "queue_depth",
            "gauge",
            "Requests waiting for admission.",
            (s.queued_requests.load(Relaxed) + s.waiting_sequences.load(Relaxed)) as f64,
        );
        counter(
            &mut out,
            "running_sequences",
            "gauge",
            "Sequences decoding.",
            s.running_sequences.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "kv_blocks_total",
            "gauge",
            "KV cache blocks.",
            total as f64,
        );
        counter(
            &mut out,
            "kv_blocks_free",
            "gauge",
            "Free KV cache blocks.",
            free as f64,
        );
        counter(
            &mut out,
            "kv_blocks_used",
            "gauge",
            "KV cache blocks in use.",
            total.saturating_sub(free) as f64,
        );
        counter(
            &mut out,
            "preemptions_total",
            "counter",
            "Sequences preempted for KV blocks.",
            s.preemptions.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "engine_steps_total",
            "counter",
            "Forward passes run.",
            s.steps.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "engine_batch_tokens_total",
            "counter",
            "Tokens run through the model (prompt and decode).",
            s.batch_tokens.load(Relaxed) as f64,
        );
        s.step_seconds.render(
            &mut out,
            "engine_step_seconds",
            "Duration of engine steps (forward pass, sampling, detokenization).",
        );
        counter(
            &mut out,
            "generation_tokens_total",
            "counter",
            "Tokens sampled by the engine.",
            s.generated_tokens.load(Relaxed) as f64,
        );
        let _ = writeln!(out, "# HELP moeserve_expert_tokens_total Tokens routed to each expert.\n# TYPE moeserve_expert_tokens_total counter");
        for (layer, experts) in engine.loaded.model.expert_load() {
            for (e, c) in experts.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "moeserve_expert_tokens_total{{layer=\"{layer}\",expert=\"{e}\"}} {}",
                    c.load(Relaxed)
                );
            }
        }
        if let Ok(m) = self.keys.lock() {
            if !m.is_empty() {
                let _ = writeln!(out, "# HELP moeserve_key_requests_total Requests per API key id.\n# TYPE moeserve_key_requests_total counter");
                for (id, k) in m.iter() {
                    let _ = writeln!(
                        out,
                        "moeserve_key_requests_total{{key_id=\"{id}\"}} {}",
                        k.requests
                    );
                }
                let _ = writeln!(out, "# HELP moeserve_key_tokens_total Tokens per API key id.\n# TYPE moeserve_key_tokens_total counter");
                for (id, k) in m.iter() {
                    let _ = writeln!(
                        out,
                        "moeserve_key_tokens_total{{key_id=\"{id}\",kind=\"prompt\"}} {}",
                        k.prompt_tokens
                    );
                    let _ = writeln!(
                        out,
                        "moeserve_key_tokens_total{{key_id=\"{id}\",kind=\"completion\"}} {}",
                        k.completion_tokens
                    );
                }
            }
        }
        out
    }
}
