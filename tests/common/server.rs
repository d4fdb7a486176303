//! Starts `moeserve serve` on a free loopback port for a test and stops it when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Server {
    child: Child,
    pub base: String,
    pub model: String,
}

impl Server {
    /// `moeserve serve --port 0 <args>`; waits for the "listening on" line.
    pub fn start(model_dir: Option<&std::path::Path>, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moeserve"));
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"]);
        if let Some(dir) = model_dir {
            cmd.arg("--model").arg(dir);
        }
        cmd.args(["--served-model-name", "test-model"]);
        cmd.args(extra);
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn moeserve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read address");
        let base = line
            .trim()
            .strip_prefix("moeserve listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server {
            child,
            base,
            model: "test-model".into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit; true on status 0.
    pub fn wait_success(&mut self) -> bool {
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls for the process to exit for at most `limit`; its status, or None if it is still running.
    pub fn wait_timeout(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The `host:port` the server listens on (for raw TCP clients).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base
            .split("://")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {:?}", self.base))
    }

    pub fn v1(&self) -> String {
        format!("{}/v1", self.base)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Server {
    /// The embedded default model (4k context) served with the chat template
    /// `tests/fixtures/chat/tools/<name>.jinja` and compact constrained JSON (a random model spends
    /// whatever whitespace it is allowed).
    pub fn with_chat_template(name: &str, extra: &[&str]) -> Server {
        let template = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/chat/tools/{name}.jinja"));
        let mut args = vec![
            "--chat-template",
            template.to_str().unwrap(),
            "--json-whitespace",
            "compact",
        ];
        args.extend_from_slice(extra);
        Server::start(None, &args)
    }

    /// An `async-openai` client for this server.
    pub fn openai_client(&self) -> async_openai::Client<async_openai::config::OpenAIConfig> {
        async_openai::Client::with_config(
            async_openai::config::OpenAIConfig::new()
                .with_api_base(self.v1())
                .with_api_key("unused"),
        )
    }

    /// POSTs `body` (a streamed request) to `path`: the `data:` payloads of the SSE answer, in order.
    pub async fn post_sse(&self, path: &str, body: &serde_json::Value) -> Vec<String> {
        let text = reqwest::Client::new()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    /// POSTs `body` as JSON to `path`: the status and the JSON answer (`null` when it is not JSON).
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = reqwest::Client::new()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
