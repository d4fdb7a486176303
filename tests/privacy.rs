//! Privacy canary audit: the server runs with the most verbose logging (`RUST_LOG=trace`) and HOME, TMPDIR
//! and its working directory in fresh folders. Unique canary strings go through every route and parameter,
//! error paths and a client that disconnects mid-stream. Then every byte the process wrote (stdout, stderr,
//! every file under those folders) and the /metrics page are searched: no canary, nor any 8-byte piece of
//! one, may appear.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use futures::StreamExt;
use serde_json::json;

const PIECE: usize = 8;

struct Canaries(Vec<String>);

impl Canaries {
    fn new() -> Self {
        Self(Vec::new())
    }
    /// A fresh canary: unique, and unlike anything a model or the server would produce.
    fn next(&mut self) -> String {
        use rand::Rng;
        let n: u64 = rand::rng().random();
        let c = format!("Qz{}Xk{:016x}Vw", self.0.len(), n);
        self.0.push(c.clone());
        c
    }
    fn leaks_in(&self, haystack: &[u8], what: &str) {
        for c in &self.0 {
            for start in 0..=c.len() - PIECE {
                let piece = &c.as_bytes()[start..start + PIECE];
                if haystack.windows(PIECE).any(|w| w == piece) {
                    panic!(
                        "canary piece {:?} found in {what}",
                        String::from_utf8_lossy(piece)
                    );
                }
            }
        }
    }
}

fn all_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                all_files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

#[tokio::test]
async fn no_request_content_reaches_logs_files_or_metrics() {
    let root = tempfile::tempdir().unwrap();
    let (home, tmp, cwd) = (
        root.path().join("home"),
        root.path().join("tmp"),
        root.path().join("cwd"),
    );
    for d in [&home, &tmp, &cwd] {
        std::fs::create_dir(d).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_moeserve"))
        .args([
            "serve",
            "--port",
            "0",
            "--served-model-name",
            "m",
            "--max-body-bytes",
            "8192",
            "--log-format",
            "json",
            // A template that shows tools, so tool definitions, calls and schemas are exercised.
            "--chat-template",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/chat/tools/qwen3.jinja"
            ),
        ])
        .env("RUST_LOG", "trace")
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .current_dir(&cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let line = String::from_utf8(first.clone()).unwrap();
    let base = line
        .trim()
        .strip_prefix("moeserve listening on ")
        .unwrap()
        .to_owned();
    let http = reqwest::Client::new();
    let mut c = Canaries::new();
    let post = |path: &str, body: String| {
        http.post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .header("user-agent", "audit")
            .body(body)
            .send()
    };

    // Chat, not streamed and streamed, with canaries in every text field and parameter.
    for stream in [false, true] {
        let body = json!({"model": "m", "stream": stream, "max_tokens": 4, "user": c.next(),
            "messages": [{"role": "system", "content": c.next()}, {"role": "user", "content": c.next()},
                {"role": "assistant", "content": [{"type": "text", "text": c.next()}]},
                {"role": "user", "content": c.next()}],
            "stop": [c.next(), c.next()], "logprobs": true, "top_logprobs": 2, "seed": 3,
            "metadata": {"note": c.next()}});
        let resp = post("/v1/chat/completions", body.to_string())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // Tools, earlier calls, tool results, reasoning, template variables and schemas: all content.
    for stream in [false, true] {
        let schema = json!({"type": "object", "properties": {c.next(): {"type": "string",
            "description": c.next(), "maxLength": 3}}, "required": [], "additionalProperties": false});
        let tools = json!([{"type": "function", "function": {"name": "get_x", "description": c.next(),
            "parameters": schema.clone()}}]);
        let messages = json!([{"role": "user", "content": c.next()},
            {"role": "assistant", "content": null, "reasoning_content": c.next(),
             "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_x", "arguments": json!({"q": c.next()}).to_string()}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": c.next()}]);
        for extra in [
            json!({"tools": tools.clone(), "tool_choice": "required"}),
            json!({"tools": tools.clone(), "chat_template_kwargs": {"enable_thinking": false, "x": c.next()}}),
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema.clone()}}}),
        ] {
            let mut body =
                json!({"model": "m", "stream": stream, "max_tokens": 4, "messages": messages});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let resp = post("/v1/chat/completions", body.to_string())
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
        }
    }
    // A schema that cannot be enforced: refused without echoing it.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": c.next()}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s",
            "schema": {"type": "string", "format": c.next()}}}});
    let resp = post("/v1/chat/completions", body.to_string())
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    c.leaks_in(&resp.bytes().await.unwrap(), "the schema error");
    // Completions: text, list of texts, streamed, with stop strings.
    for stream in [false, true] {
        let body = json!({"model": "m", "prompt": [c.next(), c.next()], "max_tokens": 3, "stream": stream,
            "stop": c.next(), "logprobs": 2, "echo": true});
        let resp = post("/v1/completions", body.to_string()).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // A field we do not implement (`suffix`) is refused by name; its content is not echoed or logged.
    let body = json!({"model": "m", "prompt": c.next(), "max_tokens": 3, "suffix": c.next()});
    let resp = post("/v1/completions", body.to_string()).await.unwrap();
    assert_eq!(resp.status(), 400);
    resp.bytes().await.unwrap();
    // Tokenize / detokenize.
    let resp = post("/tokenize", json!({"prompt": c.next()}).to_string())
        .await
        .unwrap();
    let ids: serde_json::Value = resp.json().await.unwrap();
    post(
        "/tokenize",
        json!({"messages": [{"role": "user", "content": c.next()}]}).to_string(),
    )
    .await
    .unwrap();
    post("/detokenize", json!({"tokens": ids["tokens"]}).to_string())
        .await
        .unwrap();
    // Error paths, each carrying canaries.
    let errors = [
        json!({"model": "m", "messages": [{"role": "user", "content": c.next()}], "temperature": 9}).to_string(),
        json!({"model": "m", "messages": [{"role": "user", "content": c.next()}], "max_tokens": c.next()})
            .to_string(),
        json!({"model": c.next(), "messages": [{"role": "user", "content": c.next()}]}).to_string(),
        json!({"model": "m", "messages": [{"role": "user", "content": c.next()}],
            "logit_bias": {c.next(): 1}})
        .to_string(),
        json!({"model": "m", "messages": [{"role": c.next(), "content": [{"type": "image_url", "text": c.next()}]}]})
            .to_string(),
        format!("{{\"model\": \"m\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}", c.next()),
        json!({"model": "m", "messages": [{"role": "user", "content": c.next().repeat(600)}]}).to_string(),
    ];
    for body in errors {
        let resp = post("/v1/chat/completions", body).await.unwrap();
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    // A prompt longer than the context.
    let long = format!("{} ", c.next()).repeat(700);
    let resp = post(
        "/v1/completions",
        json!({"model": "m", "prompt": long.clone(), "max_tokens": 4000}).to_string(),
    )
    .await
    .unwrap();
    assert!(resp.status().is_client_error());
    // Unknown route with a canary in the path and query; canary in a header.
    let resp = http
        .get(format!("{base}/v1/{}?q={}", c.next(), c.next()))
        .header("x-note", c.next())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // A client that disconnects mid-stream.
    let resp = post(
        "/v1/completions",
        json!({"model": "m", "prompt": c.next(), "max_tokens": 500, "stream": true, "ignore_eos": true}).to_string(),
    )
    .await
    .unwrap();
    let mut s = resp.bytes_stream();
    s.next().await.unwrap().unwrap();
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    c.leaks_in(&metrics, "/metrics");

    // Graceful stop, then read everything the process wrote.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "server exit {status:?}");
    let mut out = first;
    stdout.read_to_end(&mut out).unwrap();
    let err = stderr_reader.join().unwrap();
    let err_text = String::from_utf8_lossy(&err);
    assert!(
        err_text.contains("request_id"),
        "the access log ran (trace level): {}",
        err.len()
    );
    assert!(
        err_text.lines().count() > 20,
        "verbose logging produced output"
    );
    for line in err_text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line"));
        assert!(v["level"].is_string() && v["fields"].is_object());
    }
    c.leaks_in(&out, "stdout");
    c.leaks_in(&err, "stderr");
    let mut files = Vec::new();
    for d in [&home, &tmp, &cwd] {
        all_files(d, &mut files);
    }
    for f in files {
        c.leaks_in(&std::fs::read(&f).unwrap(), &f.display().to_string());
    }
    assert!(c.0.len() > 40);
}
