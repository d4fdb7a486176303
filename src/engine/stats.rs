//! Counters the engine publishes for the HTTP side (admission control, health, metrics): counts and
//! timings only, and the histogram type the metrics use.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

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
    /// Duration of each step (batch assembly, forward pass, sampling, detokenization, events).
    pub step_seconds: Histogram,
    /// Tokens run through the model (prompt and decode).
    pub batch_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub shutting_down: AtomicBool,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A fixed-bucket histogram of seconds, rendered in the Prometheus text format (lock-free: the engine
/// thread and the HTTP tasks observe into it).
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: LATENCY_BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (b, bound) in self.buckets.iter().zip(LATENCY_BOUNDS) {
            if seconds <= *bound {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(
            out,
            "# HELP moeserve_{name} {help}\n# TYPE moeserve_{name} histogram"
        );
        for (b, bound) in self.buckets.iter().zip(LATENCY_BOUNDS) {
            let _ = writeln!(
                out,
                "moeserve_{name}_bucket{{le=\"{bound}\"}} {}",
                b.load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "moeserve_{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "moeserve_{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "moeserve_{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("moeserve_x_bucket{le=\"0.001\"} 0"));
        assert!(out.contains("moeserve_x_bucket{le=\"0.005\"} 1"));
        assert!(out.contains("moeserve_x_bucket{le=\"0.25\"} 2"));
        assert!(out.contains("moeserve_x_count 2"));
    }
}
