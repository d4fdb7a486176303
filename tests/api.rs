//! The OpenAI API through a real client (`async-openai`) against `moeserve serve` on a loopback port:
//! chat and completions, streamed and not, greedy parity with `generate`, concurrency, seeds, stop strings,
//! max_tokens, n, logprobs, cancellation; plus OpenAI-format errors over raw HTTP.

mod common;

use std::sync::Arc;

use async_openai::types::chat::Prompt;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs, FinishReason, StopConfiguration,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use common::server::Server;
use futures::StreamExt;
use moeserve::engine::{generate, RequestParams, SamplingParams};

fn fixture_server() -> Server {
    Server::start(Some(&common::fixture_dir("qwen3_moe")), &[])
}

fn chat_request(text: &str, max_tokens: u32) -> CreateChatCompletionRequestArgs {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model("test-model")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(text)
            .build()
            .unwrap()
            .into()])
        .max_completion_tokens(max_tokens)
        .temperature(0.0);
    args
}

/// Greedy continuation as `moeserve generate` computes it (same engine core, no server).
fn greedy_text(prompt: Vec<u32>, max_tokens: usize) -> (String, usize) {
    let loaded = Arc::new(common::load_fixture("qwen3_moe"));
    let out = generate(
        &loaded,
        prompt,
        RequestParams {
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    (out.text, out.token_ids.len())
}

async fn chat_prompt_ids(server: &Server, text: &str) -> Vec<u32> {
    let resp: serde_json::Value = reqwest::Client::new()
        .post(server.url("/tokenize"))
        .json(&serde_json::json!({"model": "test-model", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

#[tokio::test]
async fn chat_greedy_equals_generate_streamed_and_not() {
    let server = fixture_server();
    let c = server.openai_client();
    let question = "What is the capital of France?";
    let resp = c
        .chat()
        .create(chat_request(question, 12).build().unwrap())
        .await
        .unwrap();
    let text = resp.choices[0].message.content.clone().unwrap_or_default();
    let usage = resp.usage.unwrap();
    let ids = chat_prompt_ids(&server, question).await;
    assert_eq!(usage.prompt_tokens as usize, ids.len());
    let (expected, n) = greedy_text(ids, 12);
    assert_eq!(text, expected);
    assert_eq!(usage.completion_tokens as usize, n);

    let mut req = chat_request(question, 12);
    req.stream(true)
        .stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
    let mut stream = c.chat().create_stream(req.build().unwrap()).await.unwrap();
    let (mut streamed, mut first_role, mut finish, mut usage_seen, mut chunks) =
        (String::new(), None, None, None, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty());
            usage_seen = Some(u);
        }
        for ch in chunk.choices {
            if chunks == 1 {
                first_role = ch.delta.role;
            }
            streamed.push_str(ch.delta.content.as_deref().unwrap_or(""));
            if ch.finish_reason.is_some() {
                finish = ch.finish_reason;
            }
        }
    }
    assert_eq!(streamed, expected);
    assert!(first_role.is_some(), "role in the first chunk");
    assert!(finish.is_some());
    let u = usage_seen.expect("usage chunk");
    assert_eq!(u.completion_tokens as usize, n);
}

#[tokio::test]
async fn completions_match_reference_greedy_streamed_and_not() {
    completions_match_reference("qwen3_moe").await;
}

#[tokio::test]
async fn mla_fixtures_serve_their_reference_greedy() {
    for family in ["kimi_k2", "moonlight", "deepseek_v2"] {
        completions_match_reference(family).await;
    }
}

/// GGUF files converted by llama.cpp (F32: the same weights) serve the same greedy text through the
/// API, tokenizer and end-of-generation ids taken from the file: Qwen3-MoE and the DeepSeek-V3 layout.
#[tokio::test(flavor = "multi_thread")]
async fn gguf_files_serve_their_reference_greedy() {
    for family in ["qwen3_moe", "moonlight"] {
        let file = common::fixture_dir(family).join("model-f32.gguf");
        completions_match_reference_from(family, &file).await;
    }
    // A chat request renders the GGUF's own chat template.
    let file = common::fixture_dir("qwen3_moe").join("model-q8_0.gguf");
    let server = Server::start(Some(&file), &[]);
    let resp = server
        .openai_client()
        .chat()
        .create(chat_request("Hello there", 4).build().unwrap())
        .await
        .unwrap();
    assert!(resp.usage.map(|u| u.prompt_tokens).unwrap_or(0) > 3);
}

async fn completions_match_reference(family: &str) {
    completions_match_reference_from(family, &common::fixture_dir(family)).await
}

async fn completions_match_reference_from(family: &str, model: &std::path::Path) {
    let server = Server::start(Some(model), &[]);
    let c = server.openai_client();
    let r = common::reference(family);
    let loaded = common::load_fixture(family);
    let eos = &loaded.generation.eos_token_ids;
    for (i, prompt) in r.prompts.iter().enumerate() {
        let greedy: Vec<u32> = r.greedy[i]
            .iter()
            .copied()
            .take_while(|t| !eos.contains(t))
            .collect();
        let expected = loaded.tokenizer.decode(&greedy, true).unwrap();
        let req = CreateCompletionRequestArgs::default()
            .model("test-model")
            .prompt(Prompt::IntegerArray(prompt.clone()))
            .max_tokens(16u32)
            .temperature(0.0)
            .build()
            .unwrap();
        let resp = c.completions().create(req.clone()).await.unwrap();
        assert_eq!(resp.choices[0].text, expected, "{family} prompt {i}");
        let mut req = req;
        req.stream = Some(true);
        let mut stream = c.completions().create_stream(req).await.unwrap();
        let mut streamed = String::new();
        while let Some(chunk) = stream.next().await {
            for ch in chunk.unwrap().choices {
                streamed.push_str(&ch.text);
            }
        }
        assert_eq!(streamed, expected, "{family} prompt {i} streamed");
    }
}

#[tokio::test]
async fn sixteen_concurrent_streams_equal_their_solo_runs() {
    let server = Server::start(
        Some(&common::fixture_dir("qwen3_moe")),
        &["--max-batch-tokens", "64"],
    );
    let c = server.openai_client();
    let questions: Vec<String> = (0..16)
        .map(|i| format!("Question number {i}: what is {i} plus {i}?"))
        .collect();
    let mut solo = Vec::new();
    for q in &questions {
        let ids = chat_prompt_ids(&server, q).await;
        solo.push(greedy_text(ids, 10).0);
    }
    let tasks: Vec<_> = questions
        .iter()
        .map(|q| {
            let c = c.clone();
            let mut req = chat_request(q, 10);
            req.stream(true);
            let req = req.build().unwrap();
            tokio::spawn(async move {
                let mut s = c.chat().create_stream(req).await.unwrap();
                let mut text = String::new();
                while let Some(chunk) = s.next().await {
                    for ch in chunk.unwrap().choices {
                        text.push_str(ch.delta.content.as_deref().unwrap_or(""));
                    }
                }
                text
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), solo[i], "stream {i}");
    }
}

#[tokio::test]
async fn seeded_sampling_is_reproducible() {
    let server = fixture_server();
    let c = server.openai_client();
    let mut texts = Vec::new();
    for _ in 0..2 {
        let mut req = chat_request("Tell me a story", 16);
        req.temperature(1.0).seed(1234);
        let resp = c.chat().create(req.build().unwrap()).await.unwrap();
        texts.push(resp.choices[0].message.content.clone().unwrap_or_default());
    }
    assert_eq!(texts[0], texts[1]);
    // The same seed gives the same text while other requests share the batch.
    let busy: Vec<_> = (0..6)
        .map(|i| {
            let c = c.clone();
            let req = chat_request(&format!("Background request {i}"), 24)
                .build()
                .unwrap();
            tokio::spawn(async move { c.chat().create(req).await.map(|_| ()) })
        })
        .collect();
    let mut req = chat_request("Tell me a story", 16);
    req.temperature(1.0).seed(1234);
    let crowded = c.chat().create(req.build().unwrap()).await.unwrap();
    assert_eq!(
        crowded.choices[0]
            .message
            .content
            .clone()
            .unwrap_or_default(),
        texts[0]
    );
    for b in busy {
        b.await.unwrap().unwrap();
    }
    let mut req = chat_request("Tell me a story", 16);
    req.temperature(1.0).seed(99);
    let other = c.chat().create(req.build().unwrap()).await.unwrap();
    assert_ne!(
        other.choices[0].message.content.clone().unwrap_or_default(),
        texts[0]
    );
}

#[tokio::test]
async fn stop_strings_max_tokens_and_n() {
    let server = fixture_server();
    let c = server.openai_client();
    let full = c
        .chat()
        .create(chat_request("Hello there", 16).build().unwrap())
        .await
        .unwrap();
    let text = full.choices[0].message.content.clone().unwrap();
    assert_eq!(full.choices[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(full.usage.as_ref().unwrap().completion_tokens, 16);
    // A stop string from the middle of the greedy text.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let mut req = chat_request("Hello there", 16);
    req.stop(StopConfiguration::String(stop.clone()));
    let resp = c.chat().create(req.build().unwrap()).await.unwrap();
    assert_eq!(resp.choices[0].message.content.as_deref(), Some(cut));
    assert_eq!(resp.choices[0].finish_reason, Some(FinishReason::Stop));
    // Streamed: the stop string never reaches the client.
    let mut req = chat_request("Hello there", 16);
    req.stop(StopConfiguration::String(stop.clone()))
        .stream(true);
    let mut s = c.chat().create_stream(req.build().unwrap()).await.unwrap();
    let mut streamed = String::new();
    while let Some(chunk) = s.next().await {
        for ch in chunk.unwrap().choices {
            streamed.push_str(ch.delta.content.as_deref().unwrap_or(""));
        }
    }
    assert_eq!(streamed, cut);
    // n = 2, greedy: both choices equal the single answer.
    let mut req = chat_request("Hello there", 16);
    req.n(2);
    let resp = c.chat().create(req.build().unwrap()).await.unwrap();
    assert_eq!(resp.choices.len(), 2);
    for (i, ch) in resp.choices.iter().enumerate() {
        assert_eq!(ch.index as usize, i);
        assert_eq!(ch.message.content.as_deref(), Some(text.as_str()));
    }
    assert_eq!(resp.usage.unwrap().completion_tokens, 32);
    // n = 2, sampled with a seed: two different continuations.
    let mut req = chat_request("Hello there", 16);
    req.n(2).temperature(1.0).seed(5);
    let resp = c.chat().create(req.build().unwrap()).await.unwrap();
    assert_ne!(
        resp.choices[0].message.content,
        resp.choices[1].message.content
    );
}

#[tokio::test]
async fn logprobs_as_openai_documents() {
    let server = fixture_server();
    let c = server.openai_client();
    let mut req = chat_request("Hi", 6);
    req.logprobs(true).top_logprobs(3);
    let resp = c.chat().create(req.build().unwrap()).await.unwrap();
    let content = resp.choices[0]
        .logprobs
        .as_ref()
        .unwrap()
        .content
        .as_ref()
        .unwrap();
    assert_eq!(content.len(), 6);
    for t in content {
        assert!(t.logprob <= 0.0);
        assert_eq!(t.top_logprobs.len(), 3);
        assert!(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
        // Greedy: the chosen token is the most likely one.
        assert!((t.top_logprobs[0].logprob - t.logprob).abs() < 1e-6);
    }
}

async fn metric(server: &Server, name: &str) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("moeserve_{name} ")))
        .unwrap()
        .parse()
        .unwrap()
}

/// Step metrics: one histogram observation per forward pass; batch tokens = prompt + all but the last
/// sampled token (the last is never fed back).
#[tokio::test]
async fn engine_step_metrics_count_every_step_and_token() {
    let server = Server::start(None, &[]);
    assert_eq!(metric(&server, "engine_step_seconds_count").await, 0.0);
    let (status, resp, _) = post(
        &server,
        "/v1/completions",
        r#"{"model": "test-model", "prompt": [5, 6, 7, 8], "max_tokens": 6, "ignore_eos": true}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(resp["usage"]["completion_tokens"], 6);
    let steps = metric(&server, "engine_steps_total").await;
    assert_eq!(
        steps, 6.0,
        "one prefill step, then one step per further token"
    );
    assert_eq!(metric(&server, "engine_step_seconds_count").await, steps);
    assert!(metric(&server, "engine_step_seconds_sum").await > 0.0);
    assert_eq!(
        metric(&server, "engine_batch_tokens_total").await,
        4.0 + 5.0
    );
}

#[tokio::test]
async fn cancelled_stream_frees_its_blocks() {
    // Without the prefix cache every block comes back; with it, the full ones stay cached (evictable).
    for cache in ["off", "on"] {
        cancelled_stream_frees_its_blocks_with(cache).await;
    }
}

async fn cancelled_stream_frees_its_blocks_with(cache: &str) {
    let server = Server::start(None, &["--kv-blocks", "256", "--prefix-cache", cache]);
    let total = metric(&server, "kv_blocks_total").await;
    assert_eq!(metric(&server, "kv_blocks_free").await, total);
    let resp = reqwest::Client::new()
        .post(server.url("/v1/completions"))
        .json(&serde_json::json!({"model": "test-model", "prompt": "Once upon a time", "max_tokens": 3000,
            "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    for _ in 0..3 {
        body.next().await.unwrap().unwrap();
    }
    assert!(
        metric(&server, "kv_blocks_free").await < total,
        "blocks in use while streaming"
    );
    drop(body);
    let mut freed = false;
    for _ in 0..100 {
        let cached = metric(&server, "prefix_cache_blocks").await;
        if metric(&server, "kv_blocks_free").await + cached == total
            && metric(&server, "running_sequences").await == 0.0
        {
            freed = true;
            if cache == "off" {
                assert_eq!(cached, 0.0);
            }
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        freed,
        "blocks not freed after the client went away (cache {cache})"
    );
}

#[tokio::test]
async fn streamed_frames_follow_openai_order_with_n_logprobs_and_usage() {
    let server = fixture_server();
    let body = serde_json::json!({"model": "test-model", "prompt": "Once upon a time", "max_tokens": 5,
        "n": 2, "temperature": 0.0, "ignore_eos": true, "logprobs": 2, "stream": true,
        "stream_options": {"include_usage": true}});
    let payloads = server.post_sse("/v1/completions", &body).await;
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{payloads:?}"
    );
    let chunks: Vec<serde_json::Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    // The usage chunk comes last, with no choices; every chunk before it carries `usage: null`.
    let (usage, choice_chunks) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 10);
    let mut texts = [String::new(), String::new()];
    let mut offsets: [Vec<u64>; 2] = Default::default();
    let mut finished = [false, false];
    for c in choice_chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(c["usage"].is_null() && c.get("usage").is_some(), "{c}");
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        assert!(
            !finished[i],
            "choice {i} got a chunk after its finish chunk"
        );
        if let Some(reason) = choice["finish_reason"].as_str() {
            assert_eq!(reason, "length");
            finished[i] = true;
            continue;
        }
        // A token's text_offset is the length, in characters, of the text released before it (tokens
        // whose bytes do not complete a character yet release none and share the offset).
        let lp = &choice["logprobs"];
        if !lp.is_null() {
            for off in lp["text_offset"].as_array().unwrap() {
                assert_eq!(off.as_u64().unwrap() as usize, texts[i].chars().count());
                offsets[i].push(off.as_u64().unwrap());
            }
        }
        texts[i].push_str(choice["text"].as_str().unwrap());
    }
    assert_eq!(finished, [true, true]);
    // Greedy: both choices equal the non-streamed answer.
    let mut once = body.clone();
    once["stream"] = false.into();
    once["n"] = 1.into();
    let (status, v, _) = post(&server, "/v1/completions", &once.to_string()).await;
    assert_eq!(status, 200);
    let want = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(texts, [want, want]);
    let want_offsets: Vec<u64> = v["choices"][0]["logprobs"]["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(want_offsets.len(), 5);
    assert_eq!(offsets, [want_offsets.clone(), want_offsets]);
}

async fn post(
    server: &Server,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let resp = reqwest::Client::new()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json, headers)
}

fn assert_openai_error(v: &serde_json::Value) {
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
}

#[tokio::test]
async fn errors_are_openai_shaped_with_the_right_status() {
    let server = Server::start(None, &["--max-body-bytes", "2000"]);
    let chat = |extra: &str| {
        format!(
            r#"{{"model": "test-model", "messages": [{{"role": "user", "content": "hi"}}]{extra}}}"#
        )
    };
    for (body, status) in [
        (chat(r#", "temperature": 7"#), 400),
        (chat(r#", "n": 0"#), 400),
        (chat(r#", "top_logprobs": 3"#), 400),
        (chat(r#", "max_tokens": "many""#), 400),
        (r#"{"model": "test-model", "messages": []}"#.to_owned(), 400),
        ("{not json".to_owned(), 400),
        ("[1, 2]".to_owned(), 400),
        (
            r#"{"model": "other", "messages": [{"role": "user", "content": "hi"}]}"#.to_owned(),
            404,
        ),
        (chat(&format!(r#", "pad": "{}""#, "x".repeat(3000))), 413),
        (chat(r#", "max_tokens": 100000"#), 400),
        (chat(r#", "unknown_field": {"a": 1}, "max_tokens": 1"#), 200),
    ] {
        let (got, v, _) = post(&server, "/v1/chat/completions", &body).await;
        assert_eq!(got, status, "{v}");
        if status != 200 {
            assert_openai_error(&v);
        }
    }
    let (got, v, _) = post(&server, "/v1/nothing-here", "{}").await;
    assert_eq!(got, 404);
    assert_openai_error(&v);
    let long: Vec<u32> = vec![5; 5000];
    let (got, v, _) = post(
        &server,
        "/v1/completions",
        &serde_json::json!({"model": "test-model", "prompt": long}).to_string(),
    )
    .await;
    assert!(got == 400 || got == 413, "{v}");
    let too_long: Vec<u32> = vec![5; 400];
    let server2 = Server::start(None, &["--kv-blocks", "8", "--block-size", "16"]);
    let (got, v, _) = post(
        &server2,
        "/v1/completions",
        &serde_json::json!({"model": "test-model", "prompt": too_long}).to_string(),
    )
    .await;
    assert_eq!(got, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("400") && msg.contains("128"), "{msg}");
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after() {
    // One running sequence, one waiting request: the third gets 429.
    let server = Server::start(None, &["--max-queue", "1", "--max-running-seqs", "1"]);
    let long = r#"{"model": "test-model", "prompt": "hi", "max_tokens": 3000, "ignore_eos": true,
        "stream": true}"#;
    let start = || {
        reqwest::Client::new()
            .post(server.url("/v1/completions"))
            .header("content-type", "application/json")
            .body(long)
            .send()
    };
    let first = start().await.unwrap();
    assert_eq!(first.status(), 200);
    let mut first = first.bytes_stream();
    first.next().await.unwrap().unwrap();
    let second = start().await.unwrap();
    assert_eq!(second.status(), 200);
    while metric(&server, "queue_depth").await < 1.0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (got, v, headers) = post(
        &server,
        "/v1/completions",
        r#"{"model": "test-model", "prompt": "hi", "max_tokens": 2}"#,
    )
    .await;
    assert_eq!(got, 429, "{v}");
    assert_openai_error(&v);
    assert!(headers.contains_key("retry-after"));
    drop(second);
}

#[tokio::test]
async fn models_health_tokenize_detokenize() {
    let server = Server::start(None, &[]);
    let c = server.openai_client();
    let models = c.models().list().await.unwrap();
    assert_eq!(models.data[0].id, "test-model");
    let one = c.models().retrieve("test-model").await.unwrap();
    assert_eq!(one.id, "test-model");
    let missing = reqwest::get(server.url("/v1/models/other-model"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(
        !missing.text().await.unwrap().contains("other-model"),
        "the id is not echoed"
    );
    assert_eq!(
        reqwest::get(server.url("/health"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let (s, v, _) = post(&server, "/tokenize", r#"{"prompt": "hello world"}"#).await;
    assert_eq!(s, 200);
    let ids = v["tokens"].clone();
    assert_eq!(
        v["count"].as_u64().unwrap() as usize,
        ids.as_array().unwrap().len()
    );
    let (s, v, _) = post(
        &server,
        "/detokenize",
        &serde_json::json!({"tokens": ids}).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["prompt"], "hello world");
}
