//! Issue 13, "one client must never stall the server": each test here guards one of the fixes against a
//! real `moeserve serve` process — connection deadlines and cap, the drain deadline, body deadline and
//! head checks (Host, URI and header sizes, JSON content type), bounded parsing, startup validation,
//! errors that never echo request content, and forks that neither fail nor stall under KV pressure.
//! Clients that must misbehave are raw TCP sockets.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// A response read off a raw socket.
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 response (head, then a Content-Length body, or everything up to EOF).
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!(
                "connection ended before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let content_length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let mut body = buf[head_end..].to_vec();
    match content_length {
        Some(n) => {
            while body.len() < n {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => body.extend_from_slice(&chunk[..k]),
                }
            }
            body.truncate(n);
        }
        None => loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(k) => body.extend_from_slice(&chunk[..k]),
            }
        },
    }
    RawResponse { status, head, body }
}

/// Sends `request` on a fresh connection and reads the response (10 s at most).
async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_response(&mut stream).await
    })
    .await
    .expect("a response within 10 s")
}

/// A GET with the given Host header, closing the connection after the response.
fn get_with_host(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// OpenAI's error shape: `{"error": {"message": "...", "type": "...", ...}}`.
fn assert_openai_error(v: &Value) {
    assert!(
        v["error"]["message"].is_string() && v["error"]["type"].is_string(),
        "not an OpenAI error object: {v}"
    );
}

/// Waits until the server closes `stream` (read returns 0 or an error), discarding what it sends;
/// the time that took, or None if it was still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| start.elapsed())
}

async fn post_json(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    (status, v)
}

/// Peak resident set size of a process in kB (`VmHWM` of /proc/PID/status).
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Runs `moeserve serve --host 127.0.0.1 --port 0 <args>` expecting it to refuse to start: kills it and
/// panics if it is still running after 60 s. Returns (status, stdout, stderr).
fn run_expecting_exit(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moeserve"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn moeserve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut out = String::new();
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            panic!("serve {args:?} was still running after 60 s (stdout {out:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

/// A startup failure: non-zero exit, nothing on stdout (never "listening"), a short stderr without a panic
/// or backtrace, that contains `needle`.
fn assert_refused_at_startup(args: &[&str], needle: &str) {
    let (status, out, err) = run_expecting_exit(args);
    assert!(
        !status.success(),
        "serve {args:?} exited with success; stderr {err:?}"
    );
    assert!(out.is_empty(), "serve {args:?} printed on stdout: {out:?}");
    let lines = err.lines().count();
    assert!(
        (1..=3).contains(&lines),
        "serve {args:?}: stderr should be 1-3 lines, got {lines}: {err:?}"
    );
    let lower = err.to_lowercase();
    assert!(
        !lower.contains("backtrace") && !lower.contains("panicked"),
        "serve {args:?} panicked: {err:?}"
    );
    assert!(
        err.contains(needle),
        "serve {args:?}: stderr should name {needle:?}: {err:?}"
    );
}

/// Copies every file of `from` into a fresh temporary directory.
fn copy_dir(from: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// Rewrites `config.json` of `dir` with `edit`.
fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn manifest_path(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------------------

/// Guards the request-head deadline (`--header-timeout`): a client that sends part of a request head and
/// stops is disconnected, and so is an idle kept-alive connection after its response (before: both held
/// a connection, and a task, forever).
#[tokio::test]
async fn slow_header_client_is_dropped_after_the_header_timeout() {
    let server = Server::start(None, &["--header-timeout", "0.5"]);
    let addr = server.addr();

    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(3)).await;
    assert!(
        took.is_some(),
        "a partial request head still held its connection after 3 s"
    );

    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut idle).await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert!(
        !resp.head.to_ascii_lowercase().contains("connection: close"),
        "the server should keep the connection alive: {}",
        resp.head
    );
    let took = closed_within(&mut idle, Duration::from_secs(3)).await;
    assert!(
        took.is_some(),
        "an idle kept-alive connection was still open after 3 s"
    );
}

/// Guards the drain deadline (`--drain-timeout`): on SIGTERM the server exits soon after the deadline even
/// while one client stalls mid-head and another never reads its stream (before: the drain waited for
/// every connection to close, i.e. forever).
#[tokio::test]
async fn sigterm_exits_within_the_drain_deadline_with_a_stalled_client() {
    let mut server = Server::start(None, &["--drain-timeout", "1", "--header-timeout", "30"]);
    let addr = server.addr();

    // A client that stops in the middle of its request head.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHo")
        .await
        .unwrap();

    // A stream the client never reads: a tiny receive buffer, so the server's writes block at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let body =
        json!({"model": "test-model", "prompt": "stall me", "stream": true, "max_tokens": 3000,
        "ignore_eos": true})
        .to_string();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    // Read until the first event, so the generation is surely running; then never read again.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 512];
    tokio::time::timeout(Duration::from_secs(10), async {
        while find(&seen, b"data:").is_none() {
            let n = stalled.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "stream ended early: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the stream's first event within 10 s");
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );

    let start = Instant::now();
    Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    let status = server.wait_timeout(Duration::from_secs(6));
    let took = start.elapsed();
    let status = status
        .unwrap_or_else(|| panic!("still running {took:?} after SIGTERM with --drain-timeout 1"));
    assert!(status.success(), "exit status {status} after the drain");
    drop((partial, stalled));
}

/// Guards the connection cap (`--max-connections`): connections over it are answered 503 with an OpenAI
/// error and closed, and slots free up when connections close (before: no cap; idle sockets could
/// exhaust descriptors and memory).
#[tokio::test]
async fn connections_over_the_cap_get_503_json() {
    let server = Server::start(None, &["--max-connections", "2", "--header-timeout", "30"]);
    let addr = server.addr();
    let first = TcpStream::connect(addr).await.unwrap();
    let second = TcpStream::connect(addr).await.unwrap();

    let resp = raw(addr, &get_with_host("/health", "127.0.0.1")).await;
    assert_eq!(resp.status, 503, "{}", resp.head);
    assert_openai_error(&resp.json());

    drop((first, second));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = raw(addr, &get_with_host("/health", "127.0.0.1")).await;
        if resp.status == 200 {
            break;
        }
        assert_eq!(resp.status, 503, "{}", resp.head);
        assert!(
            Instant::now() < deadline,
            "still 503 five seconds after the idle connections closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Request heads and bodies
// ---------------------------------------------------------------------------------------------------------

/// Guards the body deadline (`--body-timeout`): a body that never finishes arriving is answered 408 in
/// OpenAI's format (before: the handler waited for the body forever).
#[tokio::test]
async fn body_that_never_finishes_gets_408() {
    let server = Server::start(None, &["--body-timeout", "0.5"]);
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"model\":",
        )
        .await
        .unwrap();
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(3), read_response(&mut stream))
        .await
        .expect("an answer within 3 s of a stalled body");
    assert_eq!(resp.status, 408, "{}", resp.head);
    assert_openai_error(&resp.json());
    assert!(start.elapsed() >= Duration::from_millis(300));
}

/// Guards the JSON-only POST rule: `text/plain` and HTML-form bodies (which a browser page may send
/// cross-origin without a preflight) cannot start inference, and the refusal is an OpenAI error; JSON with
/// a charset parameter is still accepted.
#[tokio::test]
async fn json_content_type_is_required_on_post() {
    let server = Server::start(None, &[]);
    let body = json!({"model": "test-model", "prompt": "hi", "max_tokens": 2}).to_string();
    let client = reqwest::Client::new();
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let resp = client
            .post(server.url("/v1/completions"))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 415, "{content_type}");
        let v: Value = resp.json().await.unwrap();
        assert_openai_error(&v);
    }
    let resp = client
        .post(server.url("/v1/completions"))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["choices"][0]["text"].is_string(), "{v}");
}

/// Guards the Host check (DNS rebinding): a loopback-bound server refuses a foreign Host with an OpenAI
/// error naming the Host param, answers `localhost` with any port, and `--allowed-hosts '*'` lifts it.
#[tokio::test]
async fn foreign_host_header_is_refused_on_loopback() {
    let server = Server::start(None, &[]);
    let resp = raw(
        server.addr(),
        &get_with_host("/v1/models", "attacker.example"),
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.head);
    let v = resp.json();
    assert_openai_error(&v);
    assert_eq!(v["error"]["param"], "Host", "{v}");
    let resp = raw(
        server.addr(),
        &get_with_host("/v1/models", "localhost:1234"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.json()["data"][0]["id"], "test-model");

    let open = Server::start(None, &["--allowed-hosts", "*"]);
    let resp = raw(
        open.addr(),
        &get_with_host("/v1/models", "attacker.example"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.head);
}

/// Guards the URI and header size limits: over them the answer is 414 / 431 with an OpenAI error body
/// (below hyper's own buffer limit, which would answer with an empty body).
#[tokio::test]
async fn oversized_uri_and_headers_get_openai_json() {
    let server = Server::start(None, &[]);
    let path = format!("/{}", "a".repeat(10 * 1024));
    let resp = raw(server.addr(), &get_with_host(&path, "127.0.0.1")).await;
    assert_eq!(resp.status, 414, "{}", resp.head);
    assert_openai_error(&resp.json());

    let request = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(70 * 1024)
    );
    let resp = raw(server.addr(), request.as_bytes()).await;
    assert_eq!(resp.status, 431, "{}", resp.head);
    assert_openai_error(&resp.json());
}

/// Guards bounded parsing: a chat body with 250,000 tiny messages is refused at the messages limit while
/// it is parsed, without building it (before: the whole body became a serde_json::Value tree, ~620 MB
/// of peak memory per request).
#[tokio::test]
async fn huge_message_list_is_refused_early_with_small_memory() {
    let server = Server::start(None, &["--max-body-bytes", "8388608"]);
    let mut body = String::with_capacity(7_600_000);
    body.push_str(r#"{"model":"test-model","messages":["#);
    for i in 0..250_000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"role":"user","content":"x"}"#);
    }
    body.push_str("]}");
    assert!(body.len() < 8_388_608, "{}", body.len());

    // Warm up the server's allocations with one ordinary (refused) request.
    let (status, _) = post_json(
        &server,
        "/v1/chat/completions",
        &json!({"model": "test-model", "messages": []}),
    )
    .await;
    assert_eq!(status, 400);
    let before = vm_hwm_kb(server.pid());
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let resp = client
            .post(server.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_openai_error(&v);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            v["error"]["param"] == "messages" || message.contains("messages"),
            "the error should be about messages: {v}"
        );
    }
    let after = vm_hwm_kb(server.pid());
    let grew_mb = after.saturating_sub(before) / 1024;
    assert!(
        grew_mb < 50,
        "peak RSS grew by {grew_mb} MB ({before} kB -> {after} kB) for two refused 7.5 MB bodies"
    );
}

/// Guards the prompt-count limit: a completions request with more prompts than the queue can ever hold is
/// a 400 (a request that can never be served), not a 429 (which invites retrying forever).
#[tokio::test]
async fn completions_with_more_prompts_than_the_queue_get_400() {
    let server = Server::start(None, &["--max-queue", "3"]);
    let (status, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"model": "test-model", "prompt": ["a", "b", "c", "d"], "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_openai_error(&v);
    // Three prompts fit.
    let (status, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"model": "test-model", "prompt": ["a", "b", "c"], "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
}

// ---------------------------------------------------------------------------------------------------------
// Startup
// ---------------------------------------------------------------------------------------------------------

/// Guards startup validation: zero counts and durations, a KV pool larger than memory, and impossible
/// model configs each stop `serve` before it listens, with a short error naming the problem (before:
/// panics, a hang allocating, or a server that failed every request).
#[test]
fn bad_flags_and_configs_fail_at_startup_with_one_line() {
    for (flag, value) in [
        ("--kv-blocks", "0"),
        ("--max-queue", "0"),
        ("--max-running-seqs", "0"),
        ("--header-timeout", "0"),
    ] {
        assert_refused_at_startup(&[flag, value], flag);
    }
    assert_refused_at_startup(&["--kv-blocks", "1000000000"], "--kv-blocks");

    let model = copy_dir(&manifest_path("weights/default"));
    edit_config(model.path(), |c| {
        c.insert("max_position_embeddings".into(), json!(0));
    });
    assert_refused_at_startup(
        &["--model", model.path().to_str().unwrap()],
        "max_position_embeddings",
    );

    let model = copy_dir(&manifest_path("tests/fixtures/deepseek_v2"));
    edit_config(model.path(), |c| {
        let experts = c["n_routed_experts"].as_u64().unwrap();
        assert_ne!(experts % 3, 0, "the fixture's experts must not split in 3");
        c.insert("topk_method".into(), json!("group_limited_greedy"));
        c.insert("n_group".into(), json!(3));
        c.insert("topk_group".into(), json!(2));
    });
    assert_refused_at_startup(&["--model", model.path().to_str().unwrap()], "n_group");
}

/// Guards TLS loading before listening: a missing certificate is a startup error naming the file, not a
/// "listening" line followed by a failure (before: the files were read after the address was printed).
#[test]
fn tls_files_are_named_and_loaded_before_listening() {
    let (status, out, err) = run_expecting_exit(&[
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert!(!status.success(), "stderr {err:?}");
    assert!(out.is_empty(), "printed on stdout: {out:?}");
    assert!(
        err.contains("/nonexistent/cert.pem"),
        "stderr should name the certificate file: {err:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------------------

/// Guards errors that never echo request content: a bad `logit_bias` value or key is refused without
/// repeating the key (a user's key is content, and error bodies get logged by proxies).
#[tokio::test]
async fn error_messages_never_echo_user_keys() {
    let server = Server::start(None, &[]);
    for bias in [
        json!({"SECRET_CANARY_KEY": "not a number"}),
        json!({"SECRET_CANARY_KEY2": 1}),
    ] {
        let resp = reqwest::Client::new()
            .post(server.url("/v1/chat/completions"))
            .json(
                &json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2, "logit_bias": bias}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "logit_bias {bias}");
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("SECRET_CANARY_KEY"),
            "the error echoes the key: {text}"
        );
        assert_openai_error(&serde_json::from_str(&text).unwrap());
    }
}

/// Guards forks under KV pressure: `n` choices that do not all fit the KV pool (or the running-sequence
/// limit) at once wait for room and all finish (before: 500 "no KV blocks to fork choice k", and forks
/// ran past --max-running-seqs). 8 blocks of 16 tokens: the 20-token prompt holds 2 and each fork needs
/// one of its own for the partly filled block, so 7 forks cannot all start together (6 blocks are free);
/// two choices of 60 tokens at a time fit (4 blocks each, one shared).
#[tokio::test]
async fn n_greater_than_one_under_kv_pressure_answers_every_choice() {
    let server = Server::start(
        None,
        &[
            "--kv-blocks",
            "8",
            "--block-size",
            "16",
            "--max-running-seqs",
            "2",
        ],
    );
    let prompt: Vec<u32> = (1..=20).collect();
    let (status, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"model": "test-model", "prompt": prompt, "n": 8, "max_tokens": 40, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 8, "{v}");
    let mut indices: Vec<u64> = choices
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    indices.sort_unstable();
    assert_eq!(indices, [0, 1, 2, 3, 4, 5, 6, 7]);
    for c in choices {
        assert_eq!(c["finish_reason"], "length", "{c}");
    }
    assert_eq!(v["usage"]["completion_tokens"], 320, "{v}");
}

/// Guards the cost of a fork: it copies one block, not the whole cache, so `n: 64` on a large pool is as
/// quick as 64 short requests (before: each fork cloned every layer's cache — ~18 s here on 2 cores).
/// The pool is as large as the default model allows: 2 GiB asked, capped at 64 sequences × full context.
#[tokio::test]
async fn fork_cost_does_not_grow_with_the_pool() {
    let server = Server::start(None, &["--kv-cache-mib", "2048"]);
    let (status, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"model": "test-model", "prompt": "hello", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "warm-up: {v}");
    let start = Instant::now();
    let (status, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"model": "test-model", "prompt": "hello", "n": 64, "max_tokens": 2}),
    )
    .await;
    let took = start.elapsed();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 64);
    assert!(took < Duration::from_secs(1), "n=64 took {took:?}");
}
