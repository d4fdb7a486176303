//! Property test: 100,000+ generated malformed request bodies (random bytes, invalid UTF-8, truncated JSON,
//! deep nesting, wrong types, huge numbers, empty messages, bad prompts and token ids) sent through the real
//! router in-process. No panic, and every answer is an OpenAI-format 4xx error.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use candle_core::{DType, Device};
use moeserve::api::{router, AppState};
use moeserve::engine::{EngineHandle, SchedulerConfig};
use moeserve::loader;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tower::ServiceExt;

const CASES: usize = 100_000;

fn wrong_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..9) {
        0 => json!("not-a-number"),
        1 => json!(-1),
        2 => json!(1e300),
        3 => json!({"nested": [1, 2, {"x": null}]}),
        4 => json!([]),
        5 => json!(true),
        6 => json!(u64::MAX),
        7 => json!(-9.5e200),
        _ => json!([[[]]]),
    }
}

/// A field of a valid request set to a value its type or range forbids.
fn broken_chat(rng: &mut StdRng) -> Value {
    let mut v =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let fields = [
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "logit_bias",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "top_logprobs",
        "stream",
        "min_p",
        "top_k",
        "max_completion_tokens",
        "stream_options",
        "logprobs",
        "repetition_penalty",
        "stop_token_ids",
    ];
    let field = fields[rng.random_range(0..fields.len())];
    let bad = match field {
        "messages" => match rng.random_range(0..5) {
            0 => json!([]),
            1 => json!([{"role": 5, "content": "x"}]),
            2 => json!([{"content": "x"}]),
            3 => {
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
            }
            _ => json!("hello"),
        },
        "temperature" => json!(rng.random_range(2.01..1e6)),
        "top_p" => json!(rng.random_range(1.01..1e6)),
        "n" => json!(rng.random_range(65..1_000_000u64)),
        "logit_bias" => json!({"not-a-token": 1, "999999999": 5}),
        "top_logprobs" => json!(rng.random_range(21..1000u64)),
        "max_tokens" | "max_completion_tokens" => json!(0),
        "presence_penalty" | "frequency_penalty" => json!(rng.random_range(2.01..1e9)),
        "min_p" => json!(rng.random_range(1.01..9.0)),
        "top_k" => json!(-rng.random_range(2..1000i64)),
        "repetition_penalty" => json!(0),
        "model" => json!(["m"]),
        _ => wrong_value(rng),
    };
    v[field] = bad;
    // A type error that validation could mistake for valid: force a wrong type where ranges allowed it.
    if field == "seed"
        || field == "stream"
        || field == "logprobs"
        || field == "stop"
        || field == "stop_token_ids"
        || field == "stream_options"
    {
        v[field] = json!({"wrong": "type"});
    }
    v
}

fn broken_completion(rng: &mut StdRng) -> Value {
    let prompt = match rng.random_range(0..7) {
        0 => json!({}),
        1 => json!([[-1]]),
        2 => json!([1e20]),
        3 => json!([]),
        4 => json!([[]]),
        5 => json!(""),
        _ => json!([999_999_999u64]),
    };
    json!({"model": "m", "prompt": prompt, "max_tokens": 1})
}

fn body(rng: &mut StdRng) -> (String, Vec<u8>) {
    let routes = [
        "/v1/chat/completions",
        "/v1/completions",
        "/tokenize",
        "/detokenize",
    ];
    let route = routes[rng.random_range(0..routes.len())].to_owned();
    let bytes: Vec<u8> = match rng.random_range(0..9) {
        0 => (0..rng.random_range(0..300))
            .map(|_| rng.random::<u8>())
            .collect(),
        1 => {
            let mut b = br#"{"model": "m", "prompt": ""#.to_vec();
            b.extend([0xff, 0xfe, 0xc3, 0x28]);
            b.extend(br#""}"#);
            b
        }
        2 => {
            let depth = rng.random_range(129..3000);
            let mut s = "[".repeat(depth);
            s.push_str(&"]".repeat(depth));
            s.into_bytes()
        }
        3 => {
            let full = serde_json::to_vec(&broken_chat(rng)).unwrap_or_default();
            let cut = rng.random_range(0..full.len().max(1));
            full[..cut].to_vec()
        }
        4 => serde_json::to_vec(
            &[json!(1), json!("x"), json!(null), json!(1.5), json!([1])][rng.random_range(0..5)],
        )
        .unwrap_or_default(),
        // An out-of-range `max_tokens` (the tokenize routes have no such field and ignore it).
        5 if route.starts_with("/v1/") => format!(
            r#"{{"model": "m", "max_tokens": 1e{}, "prompt": "x"}}"#,
            rng.random_range(400..9999)
        )
        .into_bytes(),
        5 => br#"{"model": 1e400}"#.to_vec(),
        6 => {
            let v = match route.as_str() {
                "/v1/completions" => broken_completion(rng),
                "/tokenize" => json!({"prompt": 5, "messages": "x"}),
                "/detokenize" => json!({"tokens": [-1, "a"]}),
                _ => broken_chat(rng),
            };
            serde_json::to_vec(&v).unwrap_or_default()
        }
        7 => serde_json::to_vec(&broken_chat(rng)).unwrap_or_default(),
        _ => {
            let key = "k".repeat(rng.random_range(1..50));
            format!(
                r#"{{"{key}": {}, "model": {}}}"#,
                rng.random::<u64>(),
                rng.random::<i64>()
            )
            .into_bytes()
        }
    };
    (route, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_always_get_openai_4xx() {
    let loaded =
        Arc::new(loader::load(&loader::source_for(None), &Device::Cpu, DType::F32).unwrap());
    let (engine, _thread) = EngineHandle::start(loaded, SchedulerConfig::default()).unwrap();
    let app = router(AppState::new(engine, None, "m".into(), 1 << 20));
    let mut rng = StdRng::seed_from_u64(20261122);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..CASES {
        let (route, bytes) = body(&mut rng);
        let sent = String::from_utf8_lossy(&bytes).into_owned();
        let req = Request::post(&route)
            .header("content-type", "application/json")
            .body(Body::from(bytes))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(
            (400..500).contains(&status),
            "case {i} on {route}: status {status} for {sent:?}"
        );
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("case {i}: error body is not JSON"));
        assert!(
            v["error"]["message"].is_string() && v["error"]["type"].is_string(),
            "case {i}: {v}"
        );
        *statuses.entry(status).or_insert(0usize) += 1;
    }
    assert_eq!(statuses.values().sum::<usize>(), CASES, "{statuses:?}");
}
