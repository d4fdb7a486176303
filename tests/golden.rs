//! Golden parity with HF transformers (fixtures made by scripts/make_fixtures.py): logits within 2e-5 and
//! identical greedy tokens for every family, run alone and run together in mixed prefill/decode batches.

mod common;

use candle_core::Tensor;
use common::*;
use moeserve::engine::{generate, RequestParams, SamplingParams};

fn rows_diff(ours: &[Vec<f32>], reference: &Tensor) -> f32 {
    let ours = Tensor::new(ours.to_vec(), &candle_core::Device::Cpu).unwrap();
    max_abs_diff(&ours, reference)
}

#[test]
fn prompt_logits_match_reference_alone() {
    for family in FAMILIES {
        let loaded = load_fixture(family);
        let r = reference(family);
        for (i, prompt) in r.prompts.iter().enumerate() {
            let mut runner = Runner::new(&loaded, 1, 16, 4);
            let ours = runner.step(&[(0, prompt.clone())]).remove(0);
            let diff = rows_diff(&ours, &r.tensors[&format!("logits.{i}")]);
            assert!(
                diff < TOLERANCE,
                "{family} prompt {i}: max |Δlogit| = {diff}"
            );
        }
    }
}

#[test]
fn greedy_tokens_match_reference() {
    for family in FAMILIES {
        let loaded = std::sync::Arc::new(load_fixture(family));
        let r = reference(family);
        for (i, prompt) in r.prompts.iter().enumerate() {
            let params = RequestParams {
                max_tokens: 16,
                sampling: SamplingParams {
                    temperature: 0.0,
                    ..Default::default()
                },
                ignore_eos: true,
                ..Default::default()
            };
            let out = generate(&loaded, prompt.clone(), params).unwrap();
            assert_eq!(out.token_ids, r.greedy[i], "{family} prompt {i}");
            for (a, b) in out.logprobs.iter().zip(&r.greedy_logprobs[i]) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{family} prompt {i}: logprob {a} vs {b}"
                );
            }
        }
    }
}

/// All prompts prefilled in one flat batch equals transformers' left-padded batch.
#[test]
fn batched_prefill_matches_padded_reference() {
    for family in FAMILIES {
        let loaded = load_fixture(family);
        let r = reference(family);
        let mut runner = Runner::new(&loaded, r.prompts.len(), 64, 4);
        let work: Vec<(usize, Vec<u32>)> = r.prompts.iter().cloned().enumerate().collect();
        let out = runner.step(&work);
        let last: Vec<Vec<f32>> = out
            .iter()
            .map(|rows| rows.last().unwrap().clone())
            .collect();
        let diff = rows_diff(&last, &r.tensors["batch_last"]);
        assert!(
            diff < TOLERANCE,
            "{family}: batch last-token max |Δlogit| = {diff}"
        );
    }
}

/// Continuous batching: sequences at different stages share every step — chunked prefill of one prompt
/// next to decodes of others, sequences joining late — and each still produces its reference logits and
/// its reference greedy tokens.
#[test]
fn mixed_prefill_and_decode_batches_match_reference() {
    for family in FAMILIES {
        let loaded = load_fixture(family);
        let r = reference(family);
        let n = r.prompts.len();
        let mut runner = Runner::new(&loaded, n, 96, 4);
        let mut logits_seen: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); n];
        // Prompt i is fed in chunks of `chunk[i]` tokens and starts at step `start[i]`.
        let chunk = [4usize, 16, 100, 3];
        let start = [0usize, 0, 2, 1];
        let mut fed = vec![0usize; n];
        let mut step = 0;
        while generated.iter().any(|g| g.len() < 16) {
            let mut work = Vec::new();
            for i in 0..n {
                if step < start[i] || generated[i].len() >= 16 {
                    continue;
                }
                let p = &r.prompts[i];
                if fed[i] < p.len() {
                    let end = (fed[i] + chunk[i]).min(p.len());
                    work.push((i, p[fed[i]..end].to_vec()));
                    fed[i] = end;
                } else {
                    work.push((i, vec![*generated[i].last().unwrap()]));
                }
            }
            let out = runner.step(&work);
            for ((i, _), rows) in work.iter().zip(out) {
                let prompt_done = fed[*i] == r.prompts[*i].len();
                if logits_seen[*i].len() < r.prompts[*i].len() {
                    logits_seen[*i].extend(rows.iter().cloned());
                }
                if prompt_done {
                    generated[*i].push(argmax(rows.last().unwrap()));
                }
            }
            step += 1;
            assert!(step < 200, "runaway loop");
        }
        for i in 0..n {
            let diff = rows_diff(&logits_seen[i], &r.tensors[&format!("logits.{i}")]);
            assert!(
                diff < TOLERANCE,
                "{family} prompt {i} (chunked, mixed): max |Δlogit| = {diff}"
            );
            assert_eq!(
                generated[i], r.greedy[i],
                "{family} prompt {i} greedy tokens in a mixed batch"
            );
        }
    }
}

/// Freed blocks are zeroed and reused; a sequence admitted into recycled blocks is unaffected.
#[test]
fn recycled_blocks_are_zeroed_and_reusable() {
    let loaded = load_fixture("qwen3_moe");
    let r = reference("qwen3_moe");
    let mut runner = Runner::new(&loaded, 2, 12, 4);
    runner.step(&[(0, r.prompts[1].clone())]);
    let freed = runner.release(0);
    assert!(!freed.is_empty());
    for &b in &freed {
        let keys = runner
            .kv
            .block_keys(0, b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(keys.iter().all(|x| *x == 0.0), "block {b} not zeroed");
    }
    let ours = runner.step(&[(1, r.prompts[0].clone())]).remove(0);
    let diff = rows_diff(&ours, &r.tensors["logits.0"]);
    assert!(diff < TOLERANCE, "after reuse: {diff}");
}

/// The device-generic attention path (per-sequence gather + tensor ops, what GPUs run) equals the
/// reference too, in a mixed batch.
#[test]
fn gathering_attention_path_matches_reference() {
    for family in FAMILIES {
        let mut loaded = load_fixture(family);
        loaded.model.set_gather_attention(true);
        let r = reference(family);
        let mut runner = Runner::new(&loaded, r.prompts.len(), 64, 4);
        let work: Vec<(usize, Vec<u32>)> = r.prompts.iter().cloned().enumerate().collect();
        let out = runner.step(&work);
        for (i, rows) in out.iter().enumerate() {
            let diff = rows_diff(rows, &r.tensors[&format!("logits.{i}")]);
            assert!(
                diff < TOLERANCE,
                "{family} prompt {i} (gather path): {diff}"
            );
        }
    }
}

fn prompt_only() -> RequestParams {
    RequestParams {
        max_tokens: 0,
        prompt_logprobs: Some(0),
        ..Default::default()
    }
}

/// Prompt logprobs (echo / `prompt_logprobs`) are the reference logits' log-softmax at each prompt token,
/// from the second on; with `max_tokens: 0` nothing is generated.
#[test]
fn prompt_logprobs_match_reference_log_softmax() {
    for family in FAMILIES {
        let loaded = std::sync::Arc::new(load_fixture(family));
        let r = reference(family);
        for (i, prompt) in r.prompts.iter().enumerate() {
            let out = generate(&loaded, prompt.clone(), prompt_only()).unwrap();
            assert!(out.token_ids.is_empty(), "{family} prompt {i}");
            assert_eq!(out.prompt_logprobs.len(), prompt.len() - 1);
            let logits = r.tensors[&format!("logits.{i}")].to_vec2::<f32>().unwrap();
            for (pos, lp) in out.prompt_logprobs.iter().enumerate() {
                let want = log_softmax_at(&logits[pos], prompt[pos + 1] as usize);
                assert!(
                    (lp - want).abs() < 1e-4,
                    "{family} prompt {i} position {}: {lp} vs {want}",
                    pos + 1
                );
            }
        }
    }
}

/// A prompt longer than one prompt-logprobs chunk (128 rows) gets every position's logprob once, the
/// same as one forward over the whole prompt gives.
#[test]
fn long_prompt_logprobs_cross_chunks() {
    let family = FAMILIES[0];
    let loaded = std::sync::Arc::new(load_fixture(family));
    let r = reference(family);
    let prompt: Vec<u32> = r
        .prompts
        .iter()
        .flatten()
        .copied()
        .cycle()
        .take(300)
        .collect();
    let mut runner = Runner::new(&loaded, 1, 128, 4);
    let rows = runner.step(&[(0, prompt.clone())]).remove(0);
    let out = generate(&loaded, prompt.clone(), prompt_only()).unwrap();
    assert_eq!(out.prompt_logprobs.len(), prompt.len() - 1);
    for (pos, lp) in out.prompt_logprobs.iter().enumerate() {
        let want = log_softmax_at(&rows[pos], prompt[pos + 1] as usize);
        assert!(
            (lp - want).abs() < 1e-4,
            "position {}: {lp} vs {want}",
            pos + 1
        );
    }
}
