//! Access control (hashed keys, roles, per-key limits, per-key accounting), TLS with a real rustls client,
//! and graceful drain on SIGTERM — each against a real `moeserve serve` process.

mod common;

use std::process::Command;

use common::server::Server;
use futures::StreamExt;
use moeserve::api::auth::hash_key;
use serde_json::json;

fn key_line(id: &str, key: &str, extra: &str) -> String {
    format!("{id} {} {extra}", hash_key(key))
}

async fn get(url: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn keys_roles_limits_and_accounting() {
    let keys = [
        key_line("bot", "bot-secret-1", "rpm=4"),
        key_line("ops", "ops-secret-2", "admin"),
        key_line("tok", "tok-secret-3", "tpm=30"),
    ];
    let mut args = Vec::new();
    for k in &keys {
        args.push("--api-key");
        args.push(k.as_str());
    }
    let server = Server::start(None, &args);
    assert_eq!(
        get(&server.url("/health"), None).await.status(),
        200,
        "/health is open"
    );
    for (key, status) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("bot-secret-1"), 200),
    ] {
        let resp = get(&server.url("/v1/models"), key).await;
        assert_eq!(resp.status(), status);
        if status == 401 {
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], "invalid_api_key");
        }
    }
    assert_eq!(
        get(&server.url("/metrics"), Some("bot-secret-1"))
            .await
            .status(),
        403,
        "metrics need admin"
    );
    // bot: 4 requests per minute (one used above; the 403 counts too).
    let mut limited = None;
    for _ in 0..4 {
        let resp = get(&server.url("/v1/models"), Some("bot-secret-1")).await;
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("the request limit answers 429");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The real wait until the key's minute ends (it began a moment ago), not a fixed 1.
    assert!((50..=60).contains(&retry), "retry-after {retry}");
    // tok: 30 tokens per minute; the first completion reserves prompt + 12, the second cannot fit.
    let body = json!({"model": "test-model", "prompt": "hello there", "max_tokens": 12, "ignore_eos": true});
    let client = reqwest::Client::new();
    let first = client
        .post(server.url("/v1/completions"))
        .bearer_auth("tok-secret-3")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    let second = client
        .post(server.url("/v1/completions"))
        .bearer_auth("tok-secret-3")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    let retry: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=60).contains(&retry), "retry-after {retry}");
    // A request that alone needs more than the key's limit can never pass: 400, not an endless 429.
    let huge = client
        .post(server.url("/v1/completions"))
        .bearer_auth("tok-secret-3")
        .json(&json!({"model": "test-model", "prompt": "hi", "max_tokens": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 400);
    // Accounting under key ids; neither keys nor hashes appear.
    let metrics = get(&server.url("/metrics"), Some("ops-secret-2"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("moeserve_key_tokens_total{key_id=\"tok\",kind=\"completion\"} 12"),
        "{metrics}"
    );
    assert!(metrics.contains("moeserve_key_requests_total{key_id=\"bot\"}"));
    assert!(metrics.contains("moeserve_expert_tokens_total{layer=\"0\",expert=\"0\"}"));
    assert!(
        metrics.contains("moeserve_requests_total{route=\"/v1/models\",status=\"200\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("moeserve_requests_total{route=\"/v1/models\",status=\"429\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("moeserve_requests_total{route=\"/v1/models\",status=\"401\"} 2"),
        "{metrics}"
    );
    let routed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("moeserve_expert_tokens_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    // One completion ran: (prompt + 11 decode steps) tokens × 4 layers × top-2, at least.
    assert!(routed >= 12 * 4 * 2, "tokens routed to experts: {routed}");
    assert!(metrics.contains("moeserve_time_to_first_token_seconds_count 1"));
    for secret in ["bot-secret-1", "ops-secret-2", "tok-secret-3"] {
        assert!(!metrics.contains(secret));
        assert!(!metrics.contains(&hash_key(secret)));
    }
}

/// Token limits hold under concurrency: tokens are reserved at admission (prompt + max_tokens), so 20
/// requests sent at once cannot together use more than the key's `tpm` (before: each was checked against
/// tokens of requests already finished, and 2,360 tokens went through a `tpm=50` key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_limit_holds_under_concurrent_requests() {
    let key = key_line("tok", "tok-secret", "tpm=200");
    let server = Server::start(None, &["--api-key", &key]);
    let client = reqwest::Client::new();
    let body = json!({"model": "test-model", "prompt": "hi", "max_tokens": 30, "ignore_eos": true});
    let sends = (0..20).map(|_| {
        client
            .post(server.url("/v1/completions"))
            .bearer_auth("tok-secret")
            .json(&body)
            .send()
    });
    let (mut used, mut ok, mut limited) = (0, 0, 0);
    for resp in futures::future::join_all(sends).await {
        let resp = resp.unwrap();
        match resp.status().as_u16() {
            200 => {
                let v: serde_json::Value = resp.json().await.unwrap();
                used += v["usage"]["total_tokens"].as_u64().unwrap();
                ok += 1;
            }
            429 => {
                assert!(resp.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(ok >= 1 && limited >= 1, "{ok} answered, {limited} limited");
    assert!(used <= 200, "{used} tokens through a tpm=200 key");
}

#[tokio::test]
async fn tls_with_a_real_rustls_client() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = Server::start(
        None,
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let url = server.base.replace("127.0.0.1", "localhost");
    let resp = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::get(format!("{}/health", server.base.replace("https", "http"))).await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_then_exits() {
    let mut server = Server::start(None, &[]);
    let resp = reqwest::Client::new()
        .post(server.url("/v1/completions"))
        .json(&json!({"model": "test-model", "prompt": "drain me", "max_tokens": 200, "ignore_eos": true,
            "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("data: [DONE]"),
        "the in-flight stream finished"
    );
    assert!(
        text.contains("\"finish_reason\":\"length\""),
        "it ran to max_tokens"
    );
    assert!(server.wait_success(), "exit status 0 after draining");
}
