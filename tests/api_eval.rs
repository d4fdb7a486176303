//! What evaluation harnesses send, over HTTP against `moeserve serve`: `/v1/completions` with `echo` and
//! `logprobs` (lm-evaluation-harness's `local-completions` loglikelihood requests: token-id prompts,
//! `max_tokens` 1 or 0), streamed and not, and vLLM's `prompt_logprobs` on completions and chat.

mod common;

use common::log_softmax_at;
use common::server::Server;
use serde_json::{json, Value};

/// A streamed request's chunks: the SSE payloads, which end with `[DONE]`.
async fn post_stream(server: &Server, path: &str, body: &Value) -> Vec<Value> {
    let payloads = server.post_sse(path, body).await;
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{payloads:?}"
    );
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

/// lm-eval's loglikelihood request: the context + continuation as token ids, `echo`, `logprobs: 1`,
/// `max_tokens: 1`, greedy. The prompt's logprobs (first `null`) are the reference logits' log-softmax,
/// followed by the generated token; text offsets index the echoed text.
#[tokio::test]
async fn echo_with_logprobs_returns_the_prompt_scored_by_the_reference() {
    let family = "qwen3_moe";
    let server = Server::start(Some(&common::fixture_dir(family)), &[]);
    let r = common::reference(family);
    for (i, prompt) in r.prompts.iter().enumerate() {
        let body = json!({"model": "test-model", "prompt": prompt, "max_tokens": 1, "echo": true,
            "logprobs": 1, "temperature": 0.0, "seed": 1234});
        let (status, v) = server.post_json("/v1/completions", &body).await;
        assert_eq!(status, 200, "{v}");
        let choice = &v["choices"][0];
        let lp = &choice["logprobs"];
        let token_lps = lp["token_logprobs"].as_array().unwrap();
        let tops = lp["top_logprobs"].as_array().unwrap();
        assert_eq!(token_lps.len(), prompt.len() + 1, "prompt + one generated");
        assert_eq!(lp["tokens"].as_array().unwrap().len(), prompt.len() + 1);
        assert!(token_lps[0].is_null() && tops[0].is_null(), "{lp}");
        let logits = r.tensors[&format!("logits.{i}")].to_vec2::<f32>().unwrap();
        for pos in 1..prompt.len() {
            let want = log_softmax_at(&logits[pos - 1], prompt[pos] as usize);
            let got = token_lps[pos].as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() < 1e-4,
                "prompt {i} position {pos}: {got} vs {want}"
            );
            // lm-eval's is_greedy: the token's logprob equals the best alternative's exactly when the
            // token is the argmax.
            let top = tops[pos].as_object().unwrap();
            assert_eq!(top.len(), 1);
            let best = top.values().next().unwrap().as_f64().unwrap() as f32;
            let argmax = common::argmax(&logits[pos - 1]);
            assert_eq!(best == got, argmax == prompt[pos], "position {pos}");
        }
        // The generated token is the reference's greedy token, after the prompt.
        let last = token_lps[prompt.len()].as_f64().unwrap() as f32;
        assert!((last - r.greedy_logprobs[i][0]).abs() < 1e-4);
        let text = choice["text"].as_str().unwrap();
        let offsets: Vec<usize> = lp["text_offset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_u64().unwrap() as usize)
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
        assert!(offsets.iter().all(|&o| o <= text.chars().count()));
        assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
        assert_eq!(v["usage"]["completion_tokens"], 1);
    }
}

/// `max_tokens: 0` with `echo`: the answer is the prompt itself, nothing generated; without `echo` (or
/// `prompt_logprobs`) 0 is still refused.
#[tokio::test]
async fn echo_with_zero_max_tokens_generates_nothing() {
    let server = Server::start(Some(&common::fixture_dir("qwen3_moe")), &[]);
    let body = json!({"model": "test-model", "prompt": ["Once upon a time", "The capital of"],
        "max_tokens": 0, "echo": true, "n": 2});
    let (status, v) = server.post_json("/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let texts: Vec<&str> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "Once upon a time",
            "Once upon a time",
            "The capital of",
            "The capital of"
        ]
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let mut plain = body.clone();
    plain["echo"] = false.into();
    let (status, v) = server.post_json("/v1/completions", &plain).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "max_tokens");
}

/// Streamed, an echoed choice starts with one chunk holding the prompt's text and logprobs; the chunks
/// put together equal the collected answer.
#[tokio::test]
async fn streamed_echo_equals_collected() {
    let server = Server::start(Some(&common::fixture_dir("qwen3_moe")), &[]);
    let body = json!({"model": "test-model", "prompt": "Once upon a time there was", "max_tokens": 4,
        "echo": true, "logprobs": 2, "temperature": 0.0, "ignore_eos": true});
    let (_, collected) = server.post_json("/v1/completions", &body).await;
    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    let chunks = post_stream(&server, "/v1/completions", &streamed).await;
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["text"], "Once upon a time there was");
    assert!(first["logprobs"]["token_logprobs"][0].is_null());
    let mut text = String::new();
    let mut lps: Vec<Value> = Vec::new();
    let mut offsets: Vec<Value> = Vec::new();
    for c in &chunks {
        let choice = &c["choices"][0];
        text.push_str(choice["text"].as_str().unwrap());
        if let Some(l) = choice["logprobs"].as_object() {
            lps.extend(l["token_logprobs"].as_array().unwrap().iter().cloned());
            offsets.extend(l["text_offset"].as_array().unwrap().iter().cloned());
        }
    }
    let want = &collected["choices"][0];
    assert_eq!(text, want["text"].as_str().unwrap());
    assert_eq!(&lps, want["logprobs"]["token_logprobs"].as_array().unwrap());
    assert_eq!(
        &offsets,
        want["logprobs"]["text_offset"].as_array().unwrap()
    );
}

/// vLLM's `prompt_logprobs`: per prompt position `null` first, then `{id: {logprob, rank,
/// decoded_token}}` with the prompt's own token and the top alternatives; on completions per choice, on
/// chat at the top (not streamed).
#[tokio::test]
async fn prompt_logprobs_in_vllm_shape() {
    let family = "qwen3_moe";
    let server = Server::start(Some(&common::fixture_dir(family)), &[]);
    let r = common::reference(family);
    let prompt = &r.prompts[0];
    let body =
        json!({"model": "test-model", "prompt": prompt, "max_tokens": 1, "prompt_logprobs": 2});
    let (status, v) = server.post_json("/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let pl = v["choices"][0]["prompt_logprobs"].as_array().unwrap();
    assert_eq!(pl.len(), prompt.len());
    assert!(pl[0].is_null());
    let logits = r.tensors["logits.0"].to_vec2::<f32>().unwrap();
    for pos in 1..prompt.len() {
        let entry = pl[pos].as_object().unwrap();
        let own = &entry[&prompt[pos].to_string()];
        let want = log_softmax_at(&logits[pos - 1], prompt[pos] as usize);
        assert!((own["logprob"].as_f64().unwrap() as f32 - want).abs() < 1e-4);
        let rank = own["rank"].as_u64().unwrap();
        let better = logits[pos - 1]
            .iter()
            .filter(|&&l| l > logits[pos - 1][prompt[pos] as usize])
            .count() as u64;
        assert_eq!(rank, better + 1);
        assert!(
            entry.len() == 2 || entry.len() == 3,
            "own + top 2: {entry:?}"
        );
        assert!(entry.values().all(|e| e["decoded_token"].is_string()));
    }
    // No echo asked: the text is only what was generated, without legacy logprobs.
    assert!(v["choices"][0]["logprobs"].is_null());

    let chat = json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1, "prompt_logprobs": 0});
    let (status, v) = server.post_json("/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{v}");
    let pl = v["prompt_logprobs"].as_array().unwrap();
    assert_eq!(
        pl.len() as u64,
        v["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert!(pl[0].is_null() && pl[1].is_object());
    let mut streamed = chat.clone();
    streamed["stream"] = true.into();
    let (status, v) = server.post_json("/v1/chat/completions", &streamed).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "prompt_logprobs");
}

/// lm-eval's remote tokenizer: `/tokenizer_info` gives the special tokens' texts and the chat template;
/// the eos text tokenizes (without special tokens added) back to the eos id, as it checks.
#[tokio::test]
async fn tokenizer_info_serves_a_remote_tokenizer() {
    let server = Server::start(Some(&common::fixture_dir("qwen3_moe")), &[]);
    let info: Value = reqwest::get(server.url("/tokenizer_info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let eos = info["eos_token"].as_str().unwrap();
    assert!(info["chat_template"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert!(info["model_max_length"].as_u64().unwrap() > 0);
    let (status, v) = server
        .post_json(
            "/tokenize",
            &json!({"prompt": eos, "add_special_tokens": false}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["tokens"][0], info["eos_token_ids"][0]);
    let (_, v) = server
        .post_json("/detokenize", &json!({"tokens": v["tokens"]}))
        .await;
    assert_eq!(v["prompt"], eos);
}

/// `--matmul-precision medium` rounds the activations of prompt-sized bf16 products (prompts of 33+
/// tokens on the bf16-stored fixture) to bf16 where the CPU has AVX512-BF16: prompt logprobs stay within
/// bf16's reach of the f32 reference but visibly leave the 1e-4 that the default `high` holds (the test
/// above) — the flag reaches the kernel.
#[tokio::test]
async fn medium_matmul_precision_rounds_prompt_products() {
    let family = "qwen3_moe";
    let server = Server::start(
        Some(&common::fixture_dir(family)),
        &["--matmul-precision", "medium"],
    );
    let r = common::reference(family);
    let mut worst = 0f32;
    for (i, prompt) in r.prompts.iter().enumerate() {
        if prompt.len() <= 32 {
            continue;
        }
        let body = json!({"model": "test-model", "prompt": prompt, "max_tokens": 1, "echo": true,
            "logprobs": 1, "temperature": 0.0});
        let (status, v) = server.post_json("/v1/completions", &body).await;
        assert_eq!(status, 200, "{v}");
        let lps = v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .clone();
        let logits = r.tensors[&format!("logits.{i}")].to_vec2::<f32>().unwrap();
        for pos in 1..prompt.len() {
            let want = log_softmax_at(&logits[pos - 1], prompt[pos] as usize);
            let got = lps[pos].as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() < 5e-2,
                "prompt {i} position {pos}: {got} vs {want}"
            );
            worst = worst.max((got - want).abs());
        }
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw") {
        assert!(worst > 1e-4, "no sign of rounding: {worst}");
    }
}
