//! `moeserve bench`: a load generator for any OpenAI-compatible endpoint (ours, llama.cpp's llama-server,
//! vLLM), measuring what `vllm bench serve` measures. Streams `/v1/completions`, timing the first chunk
//! (TTFT), the gaps between chunks (ITL) and the end (E2EL), with token counts from the usage chunk.
//! Prompts are random token ids (fixed or ranged lengths) or a ShareGPT-format JSON file; arrivals are
//! Poisson at `--request-rate` (or all at once) under an optional concurrency cap. Prompt and output text
//! are neither printed nor saved: the JSON result holds counts and timings only.

pub mod multiturn;
pub mod plot;
pub(crate) mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use stats::{summarize, RequestResult, Summary};

/// One request to send.
#[derive(Clone)]
pub struct BenchRequest {
    pub prompt: Value,
    pub output_len: usize,
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub base_url: String,
    pub model: Option<String>,
    pub api_key: Option<String>,
    /// Requests per second; `None` = all at once.
    pub request_rate: Option<f64>,
    pub max_concurrency: Option<usize>,
    pub ignore_eos: bool,
    pub warmup: usize,
    pub seed: u64,
    pub percentiles: Vec<f64>,
    pub progress: bool,
}

/// Random token-id prompts: lengths uniform in `len × [1 − ratio, 1 + ratio]`, ids in `[10, vocab)`.
pub fn random_dataset(
    n: usize,
    input_len: usize,
    output_len: usize,
    range_ratio: f64,
    vocab: u32,
    seed: u64,
) -> Vec<BenchRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ranged = |rng: &mut StdRng, len: usize| -> usize {
        let lo = ((len as f64) * (1.0 - range_ratio)).round().max(1.0) as usize;
        let hi = ((len as f64) * (1.0 + range_ratio)).round().max(lo as f64) as usize;
        rng.random_range(lo..=hi)
    };
    (0..n)
        .map(|_| {
            let il = ranged(&mut rng, input_len);
            let ol = ranged(&mut rng, output_len);
            let ids: Vec<u32> = (0..il)
                .map(|_| rng.random_range(10..vocab.max(11)))
                .collect();
            BenchRequest {
                prompt: json!(ids),
                output_len: ol,
            }
        })
        .collect()
}

/// ShareGPT-format file: the first human turn is the prompt; the output length is the first reply's
/// length in characters / 4 (no tokenizer on the client side), or `fixed_output` when given.
pub fn sharegpt_dataset(
    path: &std::path::Path,
    n: usize,
    fixed_output: Option<usize>,
    seed: u64,
) -> anyhow::Result<Vec<BenchRequest>> {
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut out = Vec::new();
    for conv in data.as_array().into_iter().flatten() {
        let turns = conv.get("conversations").and_then(|c| c.as_array());
        let (Some(turns), true) = (turns, out.len() < usize::MAX) else {
            continue;
        };
        if turns.len() < 2 {
            continue;
        }
        let (Some(prompt), Some(reply)) = (
            turns[0].get("value").and_then(|v| v.as_str()),
            turns[1].get("value").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        let output_len = fixed_output.unwrap_or_else(|| (reply.chars().count() / 4).clamp(4, 2048));
        out.push(BenchRequest {
            prompt: json!(prompt),
            output_len,
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    // Deterministic shuffle, then take n.
    for i in (1..out.len()).rev() {
        let j = rng.random_range(0..=i);
        out.swap(i, j);
    }
    out.truncate(n);
    anyhow::ensure!(
        !out.is_empty(),
        "no usable conversations in {}",
        path.display()
    );
    Ok(out)
}

pub(crate) fn client(cfg: &BenchConfig) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &cfg.api_key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))?,
        );
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(3600))
        .tcp_nodelay(true)
        .build()?)
}

/// The served model's name (first entry of /v1/models).
pub async fn discover_model(cfg: &BenchConfig) -> anyhow::Result<String> {
    if let Some(m) = &cfg.model {
        return Ok(m.clone());
    }
    let v: Value = client(cfg)?
        .get(format!("{}/v1/models", cfg.base_url))
        .send()
        .await?
        .json()
        .await?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no model listed at {}/v1/models", cfg.base_url))
}

/// Sends one streamed completion and times it.
pub(crate) async fn send(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    req: &BenchRequest,
    ignore_eos: bool,
) -> RequestResult {
    let body = json!({"model": model, "prompt": req.prompt, "max_tokens": req.output_len, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": ignore_eos});
    let mut result = RequestResult::default();
    // A server may close an idle keep-alive connection just as it is reused (llama-server does): the
    // request then fails before it was sent, and is retried once on a fresh connection.
    let mut attempt = 0;
    let (start, resp) = loop {
        let start = Instant::now();
        match client.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => break (start, r),
            Ok(r) => {
                result.error = Some(format!("HTTP {}", r.status().as_u16()));
                return result;
            }
            Err(e) if e.is_request() && attempt == 0 => attempt += 1,
            Err(e) => {
                result.error = Some(format!(
                    "connection: {}",
                    if e.is_timeout() { "timeout" } else { "error" }
                ));
                return result;
            }
        }
    };
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::<u8>::new();
    let mut last: Option<Instant> = None;
    let mut chunks = 0usize;
    while let Some(piece) = stream.next().await {
        let Ok(piece) = piece else {
            result.error = Some("stream interrupted".into());
            return result;
        };
        buf.extend_from_slice(&piece);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                if data.trim() == "[DONE]" {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    result.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                    result.cached_tokens = u["prompt_tokens_details"]["cached_tokens"]
                        .as_u64()
                        .unwrap_or(0) as usize;
                    result.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
                }
                let has_text = v["choices"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|ch| ch["text"].as_str().is_some_and(|t| !t.is_empty()))
                });
                if has_text {
                    let now = Instant::now();
                    match last {
                        None => result.ttft = now.duration_since(start).as_secs_f64(),
                        Some(prev) => result.itl.push(now.duration_since(prev).as_secs_f64()),
                    }
                    last = Some(now);
                    chunks += 1;
                }
            }
        }
    }
    result.latency = start.elapsed().as_secs_f64();
    if result.output_tokens == 0 {
        result.output_tokens = chunks;
    }
    result.success = last.is_some();
    if !result.success {
        result.error = Some("no tokens received".into());
    }
    result
}

/// Runs the requests against the endpoint and summarises.
pub async fn run(cfg: &BenchConfig, requests: &[BenchRequest]) -> anyhow::Result<Summary> {
    let model = discover_model(cfg).await?;
    let client = client(cfg)?;
    let url = format!("{}/v1/completions", cfg.base_url);
    for req in requests.iter().take(cfg.warmup) {
        let short = BenchRequest {
            prompt: req.prompt.clone(),
            output_len: req.output_len.min(8),
        };
        send(&client, &url, &model, &short, true).await;
    }
    let bar = if cfg.progress {
        indicatif::ProgressBar::new(requests.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let limit = Arc::new(tokio::sync::Semaphore::new(
        cfg.max_concurrency.unwrap_or(usize::MAX >> 4),
    ));
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for req in requests {
        let req = req.clone();
        if let Some(rate) = cfg.request_rate.filter(|r| r.is_finite() && *r > 0.0) {
            // Poisson arrivals: exponential gaps with mean 1 / rate.
            let u: f64 = rng.random::<f64>().max(1e-12);
            tokio::time::sleep(Duration::from_secs_f64(-u.ln() / rate)).await;
        }
        let permit = limit.clone().acquire_owned().await?;
        let (client, url, model, bar) = (client.clone(), url.clone(), model.clone(), bar.clone());
        let ignore_eos = cfg.ignore_eos;
        tasks.push(tokio::spawn(async move {
            let r = send(&client, &url, &model, &req, ignore_eos).await;
            drop(permit);
            bar.inc(1);
            r
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await?);
    }
    bar.finish_and_clear();
    let duration = start.elapsed().as_secs_f64();
    Ok(summarize(
        &results,
        duration,
        &cfg.percentiles,
        cfg.max_concurrency,
        cfg.request_rate,
    ))
}
