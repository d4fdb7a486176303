//! Summary statistics of a benchmark run, defined as `vllm bench serve` defines them: request and token
//! throughput; TTFT, TPOT = (latency − TTFT) / (output tokens − 1), ITL (gaps between streamed chunks) and
//! E2EL, each with mean, median, standard deviation and chosen percentiles, in milliseconds.

use serde::Serialize;

/// What one request measured.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RequestResult {
    pub success: bool,
    pub prompt_tokens: usize,
    /// Prompt tokens the server served from its prefix cache (`usage.prompt_tokens_details`).
    pub cached_tokens: usize,
    pub output_tokens: usize,
    /// Seconds.
    pub ttft: f64,
    pub latency: f64,
    pub itl: Vec<f64>,
    /// Error kind (never content).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub mean_ms: f64,
    pub median_ms: f64,
    pub std_ms: f64,
    /// (percentile, value in ms).
    pub percentiles_ms: Vec<(f64, f64)>,
}

/// Linear-interpolated percentile of sorted data (numpy's default).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

pub(crate) fn distribution(values_s: &[f64], percentiles: &[f64]) -> Distribution {
    let mut v: Vec<f64> = values_s.iter().map(|x| x * 1000.0).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Distribution {
        mean_ms: mean,
        median_ms: percentile(&v, 50.0),
        std_ms: var.sqrt(),
        percentiles_ms: percentiles
            .iter()
            .map(|&p| (p, percentile(&v, p)))
            .collect(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub duration_s: f64,
    pub completed: usize,
    pub failed: usize,
    /// Failures by kind ("HTTP 400", "no tokens received", …: fixed strings, never response content).
    pub errors: std::collections::BTreeMap<String, usize>,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub max_concurrency: Option<usize>,
    pub request_rate: Option<f64>,
    pub ttft: Distribution,
    pub tpot: Distribution,
    pub itl: Distribution,
    pub e2el: Distribution,
    /// Per-request values in milliseconds, for plots (not written to the JSON result).
    #[serde(skip)]
    pub samples: Samples,
}

/// Raw latencies of the successful requests, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub ttft_ms: Vec<f64>,
    pub tpot_ms: Vec<f64>,
    pub itl_ms: Vec<f64>,
    pub e2el_ms: Vec<f64>,
}

pub(crate) fn summarize(
    results: &[RequestResult],
    duration_s: f64,
    percentiles: &[f64],
    max_concurrency: Option<usize>,
    request_rate: Option<f64>,
) -> Summary {
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.success).collect();
    let input: usize = ok.iter().map(|r| r.prompt_tokens).sum();
    let output: usize = ok.iter().map(|r| r.output_tokens).sum();
    let ttft: Vec<f64> = ok.iter().map(|r| r.ttft).collect();
    let tpot: Vec<f64> = ok
        .iter()
        .filter(|r| r.output_tokens > 1)
        .map(|r| (r.latency - r.ttft) / (r.output_tokens - 1) as f64)
        .collect();
    let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl.iter().copied()).collect();
    let e2el: Vec<f64> = ok.iter().map(|r| r.latency).collect();
    let d = duration_s.max(1e-9);
    Summary {
        duration_s,
        completed: ok.len(),
        failed: results.len() - ok.len(),
        errors: results
            .iter()
            .filter(|r| !r.success)
            .fold(Default::default(), |mut m, r| {
                let kind = r.error.clone().unwrap_or_else(|| "unknown".into());
                *m.entry(kind).or_insert(0) += 1;
                m
            }),
        total_input_tokens: input,
        total_output_tokens: output,
        request_throughput: ok.len() as f64 / d,
        output_throughput: output as f64 / d,
        total_token_throughput: (input + output) as f64 / d,
        max_concurrency,
        request_rate,
        ttft: distribution(&ttft, percentiles),
        tpot: distribution(&tpot, percentiles),
        itl: distribution(&itl, percentiles),
        e2el: distribution(&e2el, percentiles),
        samples: Samples {
            ttft_ms: ttft.iter().map(|v| v * 1e3).collect(),
            tpot_ms: tpot.iter().map(|v| v * 1e3).collect(),
            itl_ms: itl.iter().map(|v| v * 1e3).collect(),
            e2el_ms: e2el.iter().map(|v| v * 1e3).collect(),
        },
    }
}

impl Summary {
    /// The terminal table, laid out like vLLM's.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<40}{v:>12}\n"));
        s.push_str(&format!("{:=^52}\n", " Serving Benchmark Result "));
        line(&mut s, "Successful requests:", self.completed.to_string());
        line(&mut s, "Failed requests:", self.failed.to_string());
        for (kind, n) in &self.errors {
            line(&mut s, &format!("  {kind}:"), n.to_string());
        }
        if let Some(c) = self.max_concurrency {
            line(&mut s, "Maximum request concurrency:", c.to_string());
        }
        line(
            &mut s,
            "Benchmark duration (s):",
            format!("{:.2}", self.duration_s),
        );
        line(
            &mut s,
            "Total input tokens:",
            self.total_input_tokens.to_string(),
        );
        line(
            &mut s,
            "Total generated tokens:",
            self.total_output_tokens.to_string(),
        );
        line(
            &mut s,
            "Request throughput (req/s):",
            format!("{:.2}", self.request_throughput),
        );
        line(
            &mut s,
            "Output token throughput (tok/s):",
            format!("{:.2}", self.output_throughput),
        );
        line(
            &mut s,
            "Total token throughput (tok/s):",
            format!("{:.2}", self.total_token_throughput),
        );
        for (name, title, d) in [
            ("TTFT", "Time to First Token", &self.ttft),
            (
                "TPOT",
                "Time per Output Token (excl. 1st token)",
                &self.tpot,
            ),
            ("ITL", "Inter-token Latency", &self.itl),
            ("E2EL", "End-to-end Latency", &self.e2el),
        ] {
            s.push_str(&format!("{:-^52}\n", format!(" {title} ")));
            line(
                &mut s,
                &format!("Mean {name} (ms):"),
                format!("{:.2}", d.mean_ms),
            );
            line(
                &mut s,
                &format!("Median {name} (ms):"),
                format!("{:.2}", d.median_ms),
            );
            line(
                &mut s,
                &format!("Std {name} (ms):"),
                format!("{:.2}", d.std_ms),
            );
            for (p, v) in &d.percentiles_ms {
                line(&mut s, &format!("P{p} {name} (ms):"), format!("{v:.2}"));
            }
        }
        s.push_str(&format!("{:=^52}\n", ""));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
    }

    #[test]
    fn tpot_excludes_the_first_token() {
        let r = RequestResult {
            success: true,
            prompt_tokens: 5,
            cached_tokens: 0,
            output_tokens: 11,
            ttft: 0.1,
            latency: 1.1,
            itl: vec![0.1; 10],
            error: None,
        };
        let s = summarize(&[r], 2.0, &[99.0], None, None);
        assert!((s.tpot.mean_ms - 100.0).abs() < 1e-9);
        assert!((s.output_throughput - 5.5).abs() < 1e-12);
        assert_eq!(s.total_input_tokens, 5);
    }
}
