//! Multi-turn conversations (`moeserve bench --dataset multiturn`): what a chat app sends. Each of
//! `--num-prompts` conversations sends `--turns` requests in sequence; turn k's prompt is turn k−1's
//! prompt, then a stand-in for its answer (`--random-output-len` random ids), then `--turn-len` new random
//! ids — the whole history each time. Conversations run at once (up to `--max-concurrency`). Reported per
//! turn: prompt length, TTFT (median and p90 over conversations) and the prompt tokens the server says it
//! served from its prefix cache. Token ids only: nothing to print or save but counts and timings.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

use super::{client, discover_model, send, BenchConfig, BenchRequest};

/// The shape of the conversations.
#[derive(Debug, Clone)]
pub struct MultiTurn {
    pub conversations: usize,
    pub turns: usize,
    pub turn_len: usize,
    pub output_len: usize,
    pub vocab: u32,
}

/// One turn over every conversation.
#[derive(Debug, Clone, Serialize)]
pub struct TurnStats {
    pub turn: usize,
    pub prompt_tokens: usize,
    pub ttft_median_ms: f64,
    pub ttft_p90_ms: f64,
    /// Median prompt tokens served from the server's prefix cache (from `usage`; 0 if not reported).
    pub cached_tokens_median: usize,
    pub failed: usize,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the conversations; one entry per turn.
pub async fn run(cfg: &BenchConfig, mt: &MultiTurn) -> anyhow::Result<Vec<TurnStats>> {
    let model = discover_model(cfg).await?;
    let http = client(cfg)?;
    let url = format!("{}/v1/completions", cfg.base_url);
    let limit = Arc::new(tokio::sync::Semaphore::new(
        cfg.max_concurrency.unwrap_or(mt.conversations).max(1),
    ));
    let mut tasks = Vec::new();
    for c in 0..mt.conversations {
        let (http, url, model, mt, limit) = (
            http.clone(),
            url.clone(),
            model.clone(),
            mt.clone(),
            limit.clone(),
        );
        let seed = cfg.seed.wrapping_add(c as u64);
        let ignore_eos = cfg.ignore_eos;
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let mut rng = StdRng::seed_from_u64(seed);
            let mut history: Vec<u32> = Vec::new();
            let mut out = Vec::with_capacity(mt.turns);
            for _ in 0..mt.turns {
                history.extend((0..mt.turn_len).map(|_| rng.random_range(10..mt.vocab.max(11))));
                let req = BenchRequest {
                    prompt: json!(history),
                    output_len: mt.output_len,
                };
                let r = send(&http, &url, &model, &req, ignore_eos).await;
                out.push((history.len(), r));
                // The answer goes into the history (a stand-in: its ids are not returned).
                history.extend((0..mt.output_len).map(|_| rng.random_range(10..mt.vocab.max(11))));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            out
        }));
    }
    let mut per_turn: Vec<Vec<(usize, super::stats::RequestResult)>> = vec![Vec::new(); mt.turns];
    for t in tasks {
        for (turn, r) in t.await?.into_iter().enumerate() {
            per_turn[turn].push(r);
        }
    }
    Ok(per_turn
        .into_iter()
        .enumerate()
        .map(|(turn, rs)| {
            let mut ttft: Vec<f64> = rs
                .iter()
                .filter(|(_, r)| r.success)
                .map(|(_, r)| r.ttft * 1000.0)
                .collect();
            ttft.sort_by(f64::total_cmp);
            let mut cached: Vec<usize> = rs.iter().map(|(_, r)| r.cached_tokens).collect();
            cached.sort();
            TurnStats {
                turn: turn + 1,
                prompt_tokens: rs.first().map_or(0, |(n, _)| *n),
                ttft_median_ms: quantile(&ttft, 0.5),
                ttft_p90_ms: quantile(&ttft, 0.9),
                cached_tokens_median: cached.get(cached.len() / 2).copied().unwrap_or(0),
                failed: rs.iter().filter(|(_, r)| !r.success).count(),
            }
        })
        .collect())
}

/// The per-turn table.
pub fn table(turns: &[TurnStats]) -> String {
    let mut s = format!(
        "{:>5} {:>14} {:>16} {:>13} {:>14} {:>7}\n",
        "turn", "prompt tokens", "TTFT median ms", "TTFT p90 ms", "cached tokens", "failed"
    );
    for t in turns {
        s.push_str(&format!(
            "{:>5} {:>14} {:>16.1} {:>13.1} {:>14} {:>7}\n",
            t.turn,
            t.prompt_tokens,
            t.ttft_median_ms,
            t.ttft_p90_ms,
            t.cached_tokens_median,
            t.failed
        ));
    }
    s
}
