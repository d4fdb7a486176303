//! The engine thread under pressure: a KV cache too small for all requests at once (preemption and
//! recompute), a tiny token budget (chunked prefill), many concurrent requests — every output still equals
//! the sequence's solo greedy run, and every block is free (and zeroed) afterwards.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use moeserve::engine::{
    generate, EngineEvent, EngineHandle, RequestParams, SamplingParams, SchedulerConfig,
};

fn greedy(max_tokens: usize) -> RequestParams {
    RequestParams {
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        ignore_eos: true,
        logprobs: true,
        prompt_logprobs: Some(1),
        ..Default::default()
    }
}

/// The generated tokens; checks that the prompt's logprobs came once per position 1.., in order, before
/// any generated token (also when the sequence was preempted and its prompt recomputed).
async fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<EngineEvent>) -> Vec<u32> {
    let mut tokens = Vec::new();
    let mut prompt_next = 1;
    while let Some(e) = rx.recv().await {
        match e {
            EngineEvent::PromptLogprobs {
                from, tokens: t, ..
            } => {
                assert_eq!(from, prompt_next, "prompt logprobs in order, none twice");
                assert!(tokens.is_empty(), "prompt logprobs before generated tokens");
                prompt_next += t.len();
            }
            EngineEvent::Delta { tokens: t, .. } => tokens.extend(t.iter().map(|x| x.token)),
            EngineEvent::Finished { .. } => {}
            EngineEvent::Failed { message } => panic!("engine failed: {message}"),
        }
    }
    assert!(prompt_next > 1, "prompt logprobs were sent");
    tokens
}

async fn run_all(
    config: SchedulerConfig,
    family: &str,
) -> (Vec<Vec<u32>>, Vec<Vec<u32>>, EngineHandle) {
    let loaded = Arc::new(common::load_fixture(family));
    let r = common::reference(family);
    let solo: Vec<Vec<u32>> = r
        .prompts
        .iter()
        .map(|p| generate(&loaded, p.clone(), greedy(12)).unwrap().token_ids)
        .collect();
    let (engine, _thread) = EngineHandle::start(loaded, config).unwrap();
    let mut receivers = Vec::new();
    for _ in 0..2 {
        for p in &r.prompts {
            receivers.push(engine.submit(p.clone(), greedy(12)).unwrap().1);
        }
    }
    let mut outs = Vec::new();
    for rx in receivers {
        outs.push(collect(rx).await);
    }
    let expected: Vec<Vec<u32>> = solo.iter().chain(solo.iter()).cloned().collect();
    (outs, expected, engine)
}

#[tokio::test]
async fn preemption_under_kv_pressure_keeps_outputs_exact() {
    // 16 blocks of 4 tokens: the 8 sequences (up to 53 tokens each) cannot all fit.
    let config = SchedulerConfig {
        max_running: 8,
        max_batch_tokens: 256,
        max_waiting: 64,
        block_size: 4,
        num_blocks: 16,
        prefix_cache_ttl: None,
    };
    let (outs, expected, engine) = run_all(config, "mixtral").await;
    assert_eq!(outs, expected);
    assert!(
        engine.stats.preemptions.load(Ordering::Relaxed) > 0,
        "the test should force preemption"
    );
    assert_eq!(engine.stats.kv_blocks_free.load(Ordering::Relaxed), 16);
    engine.shutdown();
}

#[tokio::test]
async fn tiny_token_budget_chunks_prefill() {
    let config = SchedulerConfig {
        max_running: 8,
        max_batch_tokens: 5,
        max_waiting: 64,
        block_size: 8,
        num_blocks: 128,
        prefix_cache_ttl: None,
    };
    let (outs, expected, engine) = run_all(config, "olmoe").await;
    assert_eq!(outs, expected);
    assert_eq!(engine.stats.kv_blocks_free.load(Ordering::Relaxed), 128);
    engine.shutdown();
}

#[tokio::test]
async fn shutdown_drains_then_refuses() {
    let loaded = Arc::new(common::load_fixture("qwen2_moe"));
    let (engine, thread) = EngineHandle::start(loaded, SchedulerConfig::default()).unwrap();
    let (_, rx) = engine.submit(vec![5, 6, 7], greedy(8)).unwrap();
    engine.shutdown();
    assert!(
        engine.submit(vec![5], greedy(1)).is_err(),
        "no new work while draining"
    );
    assert_eq!(collect(rx).await.len(), 8, "in-flight request finished");
    thread.join().unwrap();
}
