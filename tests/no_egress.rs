//! No egress: the server needs no network but loopback. (1) In a fresh network namespace holding only a
//! loopback interface (`unshare -rn`), `moeserve serve` starts and answers a completion. (2) Under strace,
//! serving requests makes accept() calls and not a single connect() — no telemetry, no update check, no
//! outbound connection of any kind. Each part is skipped, with a message, where the tool is unavailable.

use std::process::{Command, Stdio};

fn tool_works(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

const SCRIPT: &str = r#"
set -e
ip link set lo up
"$1" serve --port 0 --served-model-name m > "$2/out.txt" 2> "$2/err.txt" &
pid=$!
for i in $(seq 1 200); do grep -q listening "$2/out.txt" && break; sleep 0.05; done
url=$(sed -n 's/moeserve listening on //p' "$2/out.txt")
curl -sf -X POST "$url/v1/completions" -H 'content-type: application/json' \
  -d '{"model": "m", "prompt": "hello", "max_tokens": 3, "ignore_eos": true}' > "$2/answer.json"
kill -TERM $pid
wait $pid
"#;

#[test]
fn serves_inside_a_loopback_only_network_namespace() {
    if !tool_works("unshare", &["-rn", "true"]) || !tool_works("curl", &["--version"]) {
        eprintln!(
            "SKIPPED: unshare -rn or curl unavailable here; no-egress namespace test not run"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("unshare")
        .args([
            "-rn",
            "sh",
            "-c",
            SCRIPT,
            "sh",
            env!("CARGO_BIN_EXE_moeserve"),
        ])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "server in the namespace failed: {status:?}"
    );
    let answer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("answer.json")).unwrap())
            .unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 3);
}

#[test]
fn makes_no_connect_calls_while_serving() {
    if !tool_works("strace", &["-o", "/dev/null", "true"]) {
        eprintln!("SKIPPED: strace unavailable here; connect() audit not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let out = dir.path().join("out.txt");
    let strace = Command::new("strace")
        .args(["-f", "-e", "trace=connect,accept,accept4", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_moeserve"))
        .args(["serve", "--port", "0", "--served-model-name", "m"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut url = String::new();
    for _ in 0..400 {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(u) = text
            .lines()
            .find_map(|l| l.strip_prefix("moeserve listening on "))
        {
            url = u.to_owned();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!url.is_empty(), "server did not start under strace");
    for path in ["/v1/completions", "/tokenize"] {
        let status = Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
            ])
            .arg(r#"{"model": "m", "prompt": "hello", "max_tokens": 2}"#)
            .arg(format!("{url}{path}"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    // Stop the traced server (strace's child), then strace exits with it.
    let children = Command::new("pgrep")
        .args(["-P", &strace.id().to_string()])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&children.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-TERM", pid]).status();
    }
    let _ = strace.wait_with_output();
    let calls = std::fs::read_to_string(&trace).unwrap();
    assert!(
        calls.contains("accept"),
        "strace saw the server accept connections:\n{calls}"
    );
    let connects: Vec<&str> = calls.lines().filter(|l| l.contains("connect(")).collect();
    assert!(
        connects.is_empty(),
        "outbound connect() calls: {connects:?}"
    );
}
