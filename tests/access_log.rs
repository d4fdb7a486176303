//! The access log of streamed requests: one line when the stream ends (or the client leaves), with the
//! tokens actually streamed and the whole duration — before, the line was written when the headers went
//! out, with `completion_tokens=0` and the time to headers as the duration.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn streamed_requests_are_logged_with_their_tokens_when_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_moeserve"))
        .args(["--log-format", "json", "serve", "--port", "0"])
        .args(["--served-model-name", "m"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("moeserve listening on ")
        .unwrap()
        .to_owned();
    let client = reqwest::Client::new();
    let body = |max: u32| json!({"model": "m", "prompt": "hi", "max_tokens": max, "ignore_eos": true, "stream": true});
    // A whole stream of 5 tokens.
    let started = std::time::Instant::now();
    let text = client
        .post(format!("{base}/v1/completions"))
        .json(&body(5))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let client_ms = started.elapsed().as_millis() as u64;
    assert!(text.contains("[DONE]"));
    // A stream the client leaves after its first chunk.
    let resp = client
        .post(format!("{base}/v1/completions"))
        .json(&body(3000))
        .send()
        .await
        .unwrap();
    let mut chunks = resp.bytes_stream();
    chunks.next().await.unwrap().unwrap();
    drop(chunks);
    // Both lines are written by the time the server has seen the disconnect.
    let lines = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let logged = std::fs::read_to_string(&log_path).unwrap();
            let lines: Vec<Value> = logged
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["target"] == "moeserve::access")
                .filter(|v| v["fields"]["route"] == "/v1/completions")
                .collect();
            if lines.len() == 2 {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two access-log lines");
    let _ = child.kill();
    let _ = child.wait();
    let whole = &lines[0]["fields"];
    assert_eq!(whole["streamed"], true);
    assert_eq!(whole["completion_tokens"], 5, "{whole}");
    assert!(whole["duration_ms"].as_u64().unwrap() <= client_ms);
    let left = &lines[1]["fields"];
    let sent = left["completion_tokens"].as_u64().unwrap();
    assert!(
        (1..3000).contains(&sent),
        "tokens streamed before the client left: {sent}"
    );
}
