//! Automatic prefix caching: a repeated prompt of the same tenant reuses the cached blocks and gives
//! exactly the same tokens and logprobs as without the cache (every family); expired blocks are zeroed in
//! the KV cache; over HTTP, `usage.prompt_tokens_details.cached_tokens` reports hits, and a tenant (API
//! key) never hits another's prompt.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::server::Server;
use moeserve::api::auth::hash_key;
use moeserve::engine::core::EngineCore;
use moeserve::engine::stats::EngineStats;
use moeserve::engine::{
    EngineEvent, EngineRequest, PrefixKey, RequestParams, SamplingParams, SchedulerConfig,
};
use moeserve::kv::prefix_cache::{chain, chain_seed};
use serde_json::{json, Value};

const BLOCK: usize = 4;

fn core(loaded: &Arc<moeserve::loader::LoadedModel>, ttl: Option<Duration>) -> EngineCore {
    let config = SchedulerConfig {
        max_running: 4,
        max_batch_tokens: 512,
        max_waiting: 16,
        block_size: BLOCK,
        num_blocks: 64,
        prefix_cache_ttl: ttl,
    };
    EngineCore::new(loaded.clone(), config, Arc::new(EngineStats::default())).unwrap()
}

/// Runs `prompt` (tenant `tenant`) to completion on `core`: its tokens, logprobs and cached tokens.
fn run(core: &mut EngineCore, prompt: &[u32], tenant: u8, id: u64) -> (Vec<u32>, Vec<f32>, usize) {
    let seed = chain_seed(&[tenant; 32]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    core.add(EngineRequest {
        id,
        prompt: prompt.to_vec(),
        params: Arc::new(RequestParams {
            max_tokens: 8,
            sampling: SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            ignore_eos: true,
            logprobs: true,
            ..Default::default()
        }),
        events: tx,
        constraint: None,
        prefix: Some(Arc::new(PrefixKey {
            seed,
            prompt_hashes: chain(&seed, prompt, BLOCK),
        })),
    });
    while core.has_work() {
        core.step().unwrap();
    }
    let (mut tokens, mut logprobs, mut cached) = (Vec::new(), Vec::new(), 0);
    while let Ok(e) = rx.try_recv() {
        match e {
            EngineEvent::Delta { tokens: t, .. } => {
                for x in t {
                    tokens.push(x.token);
                    logprobs.push(x.logprob);
                }
            }
            EngineEvent::Finished { cached_tokens, .. } => cached = cached_tokens,
            _ => {}
        }
    }
    (tokens, logprobs, cached)
}

#[test]
fn a_cached_prefix_gives_the_same_output_as_none() {
    for family in common::FAMILIES {
        let loaded = Arc::new(common::load_fixture(family));
        let prompt = common::reference(family).prompts[1].clone();
        let (want_tokens, want_lp, _) = run(&mut core(&loaded, None), &prompt, 1, 1);
        let mut cached = core(&loaded, Some(Duration::from_secs(60)));
        let first = run(&mut cached, &prompt, 1, 1);
        assert_eq!(first.2, 0, "{family}: nothing cached yet");
        let second = run(&mut cached, &prompt, 1, 2);
        let full = (prompt.len() - 1) / BLOCK * BLOCK;
        assert_eq!(
            second.2, full,
            "{family}: the prompt's full blocks come from the cache"
        );
        for (tokens, lp, _) in [first, second] {
            assert_eq!(tokens, want_tokens, "{family}");
            for (a, b) in lp.iter().zip(&want_lp) {
                assert!((a - b).abs() < 1e-5, "{family}: logprob {a} vs {b}");
            }
        }
        // Another tenant: no hit, the same answer.
        let other = run(&mut cached, &prompt, 2, 3);
        assert_eq!(other.2, 0, "{family}: tenants share nothing");
        assert_eq!(other.0, want_tokens);
    }
}

/// A conversation's next turn (the first turn's prompt and answer, then more) finds the first turn's
/// full blocks *and* its partly filled last block, which it gets a copy of and goes on writing into:
/// every computed token of the first turn is a hit, and the answer is the one computed without a cache.
#[test]
fn a_continued_conversation_copies_the_partly_filled_last_block() {
    for family in common::FAMILIES {
        let loaded = Arc::new(common::load_fixture(family));
        let mut prompt = common::reference(family).prompts[1].clone();
        // 8 tokens generated, 7 of them computed: the first turn leaves a partly filled block.
        if (prompt.len() + 7).is_multiple_of(BLOCK) {
            prompt.pop();
        }
        let mut cached = core(&loaded, Some(Duration::from_secs(60)));
        let (answer, _, _) = run(&mut cached, &prompt, 1, 1);
        let mut next = prompt.clone();
        next.extend(&answer);
        next.extend(&prompt[..3]);
        let (want_tokens, want_lp, _) = run(&mut core(&loaded, None), &next, 1, 1);
        let (tokens, lp, hit) = run(&mut cached, &next, 1, 2);
        assert_eq!(
            hit,
            prompt.len() + 7,
            "{family}: every computed token of the first turn"
        );
        assert_eq!(tokens, want_tokens, "{family}");
        for (a, b) in lp.iter().zip(&want_lp) {
            assert!((a - b).abs() < 1e-5, "{family}: logprob {a} vs {b}");
        }
    }
}

/// Every value of every block of the cache (keys of layer 0 suffice: all layers are zeroed together).
fn all_keys_zero(core: &EngineCore) -> bool {
    (0..64u32).all(|b| {
        core.kv()
            .block_keys(0, b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| *x == 0.0)
    })
}

#[test]
fn expired_cached_blocks_are_zeroed() {
    let loaded = Arc::new(common::load_fixture("qwen3_moe"));
    let prompt = common::reference("qwen3_moe").prompts[1].clone();
    let mut core = core(&loaded, Some(Duration::from_millis(200)));
    run(&mut core, &prompt, 1, 1);
    assert!(
        !all_keys_zero(&core),
        "the finished request's full blocks are still cached"
    );
    std::thread::sleep(Duration::from_millis(250));
    core.expire();
    assert!(all_keys_zero(&core), "expired blocks read back as zeros");
    assert!(core.next_expiry().is_none());
}

async fn chat(server: &Server, key: &str, text: &str) -> Value {
    reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(
            &json!({"model": "test-model", "messages": [{"role": "user", "content": text}],
            "max_tokens": 2}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn usage_reports_hits_and_tenants_never_share() {
    let line = |id: &str, key: &str| format!("{id} {}", hash_key(key));
    let server = Server::start(
        None,
        &[
            "--api-key",
            &format!("{} admin", line("alice", "key-a")),
            "--api-key",
            &line("bob", "key-b"),
        ],
    );
    let text = "A conversation long enough to fill a few blocks of sixteen tokens each, so that \
                the prefix cache has something to keep between two turns of the same tenant.";
    let first = chat(&server, "key-a", text).await;
    assert_eq!(
        first["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{first}"
    );
    let again = chat(&server, "key-a", text).await;
    let prompt = again["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached > 0 && cached < prompt, "{again}");
    assert_eq!(cached % 16, 0, "whole blocks");
    // Bob sends Alice's exact prompt: a miss, computed in full as any first request.
    let bob = chat(&server, "key-b", text).await;
    assert_eq!(
        bob["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{bob}"
    );
    let metrics = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth("key-a")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hits = metrics
        .lines()
        .find(|l| l.starts_with("moeserve_prefix_cache_hit_tokens_total "))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(hits.split(' ').nth(1), Some(cached.to_string().as_str()));
}
