//! Prometheus metrics through `prometheus-client` (OpenMetrics text): requests by route and status,
//! refused connections, tokens, TTFT / inter-token / end-to-end latency histograms, engine gauges (queue,
//! running sequences, KV blocks, preemptions, steps), per-layer expert load, and per-key accounting under
//! the key id. Counts and timings only — never content, never a key. The engine's numbers live in
//! [`EngineStats`] (atomics the engine thread updates) and are read at scrape time by a collector.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::stats::{latency_histogram, EngineStats};
use crate::loader::LoadedModel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabel {
    key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyKind {
    key_id: String,
    kind: &'static str,
}

/// The server's metrics (one per server; shared by handlers).
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    refused_connections: Counter,
    key_requests: Family<KeyLabel, Counter>,
    key_tokens: Family<KeyKind, Counter>,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub e2e: Histogram,
}

/// The engine's gauges and counters, read from its atomics at scrape time.
struct EngineCollector {
    stats: Arc<EngineStats>,
    loaded: Arc<LoadedModel>,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineCollector")
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(v as i64);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        let total = s.kv_blocks_total.load(Relaxed) as u64;
        let free = s.kv_blocks_free.load(Relaxed) as u64;
        let queued = s.queued_requests.load(Relaxed) + s.waiting_sequences.load(Relaxed);
        gauge(
            &mut e,
            "queue_depth",
            "Requests waiting for admission.",
            queued as u64,
        )?;
        gauge(
            &mut e,
            "running_sequences",
            "Sequences decoding.",
            s.running_sequences.load(Relaxed) as u64,
        )?;
        gauge(&mut e, "kv_blocks_total", "KV cache blocks.", total)?;
        gauge(&mut e, "kv_blocks_free", "Free KV cache blocks.", free)?;
        gauge(
            &mut e,
            "kv_blocks_used",
            "KV cache blocks in use.",
            total.saturating_sub(free),
        )?;
        counter(
            &mut e,
            "preemptions",
            "Sequences preempted for KV blocks.",
            s.preemptions.load(Relaxed),
        )?;
        counter(
            &mut e,
            "engine_steps",
            "Forward passes run.",
            s.steps.load(Relaxed),
        )?;
        counter(
            &mut e,
            "engine_batch_tokens",
            "Tokens run through the model (prompt and decode).",
            s.batch_tokens.load(Relaxed),
        )?;
        counter(
            &mut e,
            "generation_tokens",
            "Tokens sampled by the engine.",
            s.generated_tokens.load(Relaxed),
        )?;
        gauge(
            &mut e,
            "prefix_cache_blocks",
            "KV blocks the prefix cache holds.",
            s.prefix_cached_blocks.load(Relaxed) as u64,
        )?;
        counter(
            &mut e,
            "prefix_cache_queried_tokens",
            "Prompt tokens looked up in the prefix cache.",
            s.prefix_queried_tokens.load(Relaxed),
        )?;
        counter(
            &mut e,
            "prefix_cache_hit_tokens",
            "Prompt tokens served from the prefix cache.",
            s.prefix_hit_tokens.load(Relaxed),
        )?;
        counter(
            &mut e,
            "prefix_cache_evictions",
            "Cached blocks evicted to make room.",
            s.prefix_evictions.load(Relaxed),
        )?;
        counter(
            &mut e,
            "prefix_cache_expirations",
            "Cached blocks dropped when their TTL ran out.",
            s.prefix_expirations.load(Relaxed),
        )?;
        let h = &s.step_seconds;
        h.encode(e.encode_descriptor(
            "engine_step_seconds",
            "Duration of engine steps (forward pass, sampling, detokenization).",
            None,
            h.metric_type(),
        )?)?;
        let load = self.loaded.model.expert_load();
        if !load.is_empty() {
            let mut family = e.encode_descriptor(
                "expert_tokens",
                "Tokens routed to each expert.",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (layer, experts) in load {
                for (expert, c) in experts.iter().enumerate() {
                    let labels = [("layer", layer.to_string()), ("expert", expert.to_string())];
                    ConstCounter::new(c.load(Relaxed)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// The registry, with the engine's numbers read from `stats` and `loaded` at each scrape.
    pub fn new(stats: Arc<EngineStats>, loaded: Arc<LoadedModel>) -> Self {
        let mut registry = Registry::with_prefix("moeserve");
        let m = Self {
            requests: Family::default(),
            refused_connections: Counter::default(),
            key_requests: Family::default(),
            key_tokens: Family::default(),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            ttft: latency_histogram(),
            inter_token: latency_histogram(),
            e2e: latency_histogram(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "HTTP requests by route and status.",
            m.requests.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections refused at --max-connections.",
            m.refused_connections.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of answered requests.",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Tokens sent to clients.",
            m.completion_tokens.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to first generated token.",
            m.ttft.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Time between generated tokens of a sequence.",
            m.inter_token.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the last token.",
            m.e2e.clone(),
        );
        registry.register(
            "key_requests",
            "Requests per API key id.",
            m.key_requests.clone(),
        );
        registry.register("key_tokens", "Tokens per API key id.", m.key_tokens.clone());
        registry.register_collector(Box::new(EngineCollector { stats, loaded }));
        Self { registry, ..m }
    }

    pub fn record_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    pub fn record_refused_connection(&self) {
        self.refused_connections.inc();
    }

    /// Counts tokens of a finished (or streamed-to-the-end) generation, globally and for its key.
    pub fn record_tokens(&self, key: Option<&str>, prompt: u64, completion: u64) {
        self.prompt_tokens.inc_by(prompt);
        self.completion_tokens.inc_by(completion);
        if let Some(key) = key {
            for (kind, n) in [("prompt", prompt), ("completion", completion)] {
                self.key_tokens
                    .get_or_create(&KeyKind {
                        key_id: key.to_owned(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
    }

    pub fn record_key_request(&self, key: &str) {
        self.key_requests
            .get_or_create(&KeyLabel {
                key_id: key.to_owned(),
            })
            .inc();
    }

    /// The whole page (OpenMetrics text).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("encoding the metrics failed");
        }
        out
    }
}

/// The content type of [`Metrics::render`].
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
