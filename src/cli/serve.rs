//! `moeserve serve`: its flags, checked before anything is loaded or allocated (each problem is one line
//! naming the flag), the memory plan (weights at their held precision, KV pool, activations) made from
//! the headers and checked against the device's memory before anything is allocated, TLS files loaded
//! (and named in errors) before "listening" is printed, then the HTTP server until a signal.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::OnOff;
use moeserve::api::limits::{AllowedHosts, RequestLimits};
use moeserve::api::server::ConnectionLimits;
use moeserve::engine::{EngineHandle, SchedulerConfig};
use moeserve::plan::{kv_blocks, MemoryPlan, PlanInputs};

use super::{load, ModelArgs};

/// A count that must be at least 1.
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("must be a whole number".into()),
    }
}

/// Seconds, a positive finite number (fractions allowed).
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x < 1e9 => Ok(Duration::from_secs_f64(x)),
        _ => Err("must be a positive number of seconds".into()),
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Name clients use in `model` (default: the checkpoint directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences decoding together at most.
    #[arg(long, value_parser = positive, default_value_t = 64)]
    max_running_seqs: usize,
    /// Tokens per forward pass at most (decodes plus prefill chunks).
    #[arg(long, value_parser = positive, default_value_t = 2048)]
    max_batch_tokens: usize,
    /// Requests waiting for admission at most; more get 429.
    #[arg(long, value_parser = positive, default_value_t = 256)]
    max_queue: usize,
    /// KV cache blocks (overrides --kv-cache-mib).
    #[arg(long, value_parser = positive)]
    kv_blocks: Option<usize>,
    /// KV cache size in MiB when --kv-blocks is not given.
    #[arg(long, value_parser = positive, default_value_t = 1024)]
    kv_cache_mib: usize,
    /// Tokens per KV block.
    #[arg(long, value_parser = positive, default_value_t = 16)]
    block_size: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, value_parser = positive, default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// API keys file: lines `<id> <sha256-hex> [inference|admin] [rpm=N] [tpm=N]` (hashes, never keys).
    /// With keys configured, every route but /health needs `Authorization: Bearer <key>`.
    #[arg(long)]
    api_keys_file: Option<PathBuf>,
    /// One API key line, as in --api-keys-file (repeatable).
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// TLS certificate chain (PEM); with --tls-key, serve HTTPS (rustls).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds to receive a whole request head; on a kept-alive connection the clock starts when the
    /// previous response is done, so this is also the idle keep-alive timeout.
    #[arg(long, value_parser = seconds, default_value = "10")]
    header_timeout: Duration,
    /// Seconds for a whole request body to arrive (408 beyond).
    #[arg(long, value_parser = seconds, default_value = "30")]
    body_timeout: Duration,
    /// Seconds for a TLS handshake.
    #[arg(long, value_parser = seconds, default_value = "10")]
    tls_handshake_timeout: Duration,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM; then connections are closed.
    #[arg(long, value_parser = seconds, default_value = "30")]
    drain_timeout: Duration,
    /// Open connections at most; more are answered 503 and closed at once.
    #[arg(long, value_parser = positive, default_value_t = 1024)]
    max_connections: usize,
    /// Host names the server answers (Host header, port ignored), comma-separated; `*` for any.
    /// Default: localhost, 127.0.0.1 and ::1 when bound to a loopback address, any host otherwise.
    #[arg(long)]
    allowed_hosts: Option<String>,
    /// Messages in one chat request at most.
    #[arg(long, value_parser = positive, default_value_t = 4096)]
    max_messages: usize,
    /// A Jinja chat template file used instead of the checkpoint's (e.g. one that shows tools to a
    /// model whose template does not).
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Tool-call format: auto (from the chat template), none, qwen, kimi_k2, deepseek_v3, deepseek_v31,
    /// mistral, mistral_v11.
    #[arg(long, default_value = "auto", value_parser = tool_parser)]
    tool_parser: Choice<moeserve::parsers::ToolFormat>,
    /// Reasoning markers: auto (from the chat template), none, think (<think>…</think>), kimi
    /// (◁think▷…◁/think▷).
    #[arg(long, default_value = "auto", value_parser = reasoning_parser)]
    reasoning_parser: Choice<moeserve::parsers::ReasoningMarkers>,
    /// Automatic prefix caching (per tenant, memory only, zeroed when dropped): `off` keeps nothing past
    /// a request.
    #[arg(long, value_enum, default_value = "on")]
    prefix_cache: OnOff,
    /// Seconds an unused cached prefix block is kept.
    #[arg(long, value_parser = seconds, default_value = "300")]
    prefix_cache_ttl: Duration,
    /// Whitespace inside JSON under `response_format` and constrained tool calls: flexible (compact or
    /// pretty-printed, bounded at each place) or compact (none).
    #[arg(long, default_value = "flexible", value_parser = json_whitespace)]
    json_whitespace: moeserve::grammar::JsonWhitespace,
}

fn json_whitespace(s: &str) -> Result<moeserve::grammar::JsonWhitespace, String> {
    match s {
        "flexible" => Ok(moeserve::grammar::JsonWhitespace::Flexible),
        "compact" => Ok(moeserve::grammar::JsonWhitespace::Compact),
        other => Err(format!("unknown value `{other}` (flexible or compact)")),
    }
}

/// A flag that is `auto` (detected), `none`, or a named value.
#[derive(Debug, Clone, Copy)]
enum Choice<T> {
    Auto,
    Off,
    Named(T),
}

impl<T: Copy> Choice<T> {
    fn resolve(self, detected: Option<T>) -> Option<T> {
        match self {
            Choice::Auto => detected,
            Choice::Off => None,
            Choice::Named(t) => Some(t),
        }
    }
}

fn choice<T>(s: &str, named: impl Fn(&str) -> Option<T>) -> Result<Choice<T>, String> {
    match s {
        "auto" => Ok(Choice::Auto),
        "none" => Ok(Choice::Off),
        other => named(other)
            .map(Choice::Named)
            .ok_or_else(|| format!("unknown value `{other}`")),
    }
}

fn tool_parser(s: &str) -> Result<Choice<moeserve::parsers::ToolFormat>, String> {
    choice(s, moeserve::parsers::ToolFormat::from_name)
}

fn reasoning_parser(s: &str) -> Result<Choice<moeserve::parsers::ReasoningMarkers>, String> {
    choice(s, moeserve::parsers::ReasoningMarkers::from_name)
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Loads the TLS certificate chain and key, naming the files in any error.
fn load_tls(
    runtime: &tokio::runtime::Runtime,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let config = runtime
        .block_on(axum_server::tls_rustls::RustlsConfig::from_pem_file(
            cert, key,
        ))
        .with_context(|| {
            format!(
                "loading the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })?;
    // This server speaks HTTP/1.1 only: offer nothing else in ALPN.
    let mut server_config = (*config.get_inner()).clone();
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        server_config,
    )))
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Everything that can be checked without the model is checked first.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(&runtime, cert, key)?),
        _ => None,
    };
    let keys = api_keys(&args)?;
    let allowed_hosts = match &args.allowed_hosts {
        Some(list) => AllowedHosts::parse(list),
        None if is_loopback(&args.host) => AllowedHosts::loopback(),
        None => AllowedHosts::Any,
    };
    // The memory plan, from the headers alone, before any weight or KV block is allocated.
    let source = moeserve::loader::source_for(args.model.model.as_deref());
    let device = moeserve::device::open(args.model.device)?;
    let precision = args.model.precision(&device);
    let headers =
        moeserve::loader::read_headers(&source, &device, precision, args.model.load_format)
            .with_context(|| format!("reading {}", source.describe()))?;
    let block_size = args.block_size;
    let num_blocks = kv_blocks(
        &headers.spec,
        headers.kv_dtype,
        block_size,
        args.kv_blocks,
        args.kv_cache_mib,
        args.max_running_seqs,
    );
    let plan = MemoryPlan::new(PlanInputs {
        spec: &headers.spec,
        matrix_dtype: headers.matrix_dtype,
        weight_bytes: headers.weight_bytes,
        compute_dtype: headers.compute_dtype,
        kv_dtype: headers.kv_dtype,
        kv_blocks: num_blocks,
        block_size,
        max_batch_tokens: args.max_batch_tokens,
        max_running: args.max_running_seqs,
        available: moeserve::plan::available_on(&device),
    });
    plan.check().map_err(|line| anyhow::anyhow!(line))?;
    drop(headers);
    let loaded = load(&args.model, args.max_running_seqs)?;
    let rss = moeserve::memory::process_rss_bytes();
    tracing::info!(
        planned_weights_mib = plan.weights >> 20,
        planned_total_mib = plan.total() >> 20,
        rss_after_load_mib = rss.map(|b| b >> 20),
        "memory plan vs measured"
    );
    let spec = loaded.model.spec();
    let (bytes_per_token, _) =
        moeserve::inspect::kv_bytes_per_token(spec, loaded.model.kv_dtype().size_in_bytes());
    let config = SchedulerConfig {
        max_running: args.max_running_seqs,
        max_batch_tokens: args.max_batch_tokens,
        max_waiting: args.max_queue,
        block_size,
        num_blocks,
        prefix_cache_ttl: (args.prefix_cache == OnOff::On).then_some(args.prefix_cache_ttl),
    };
    let name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| match &args.model.model {
            Some(dir) => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
            None => moeserve::loader::DEFAULT_MODEL.name.to_owned(),
        });
    let chat = match &args.chat_template {
        Some(file) => Some(moeserve::chat::ChatTemplate::from_file(
            file,
            &loaded.source,
        )?),
        None => moeserve::chat::ChatTemplate::from_source(&loaded.source)?,
    };
    let (engine, engine_thread) = EngineHandle::start(loaded, config.clone())?;
    tracing::info!(
        kv_blocks = config.num_blocks,
        block_size = config.block_size,
        kv_bytes_per_token = bytes_per_token,
        max_running = config.max_running,
        max_batch_tokens = config.max_batch_tokens,
        "engine started"
    );
    if !keys.is_empty() {
        tracing::info!(keys = keys.len(), "API keys required");
    }
    let state = moeserve::api::AppState::new(engine, chat, name, args.max_body_bytes);
    // The markers found in the chat template, unless the flags say otherwise.
    let detected = state.output_format;
    let output_format = moeserve::parsers::OutputFormat {
        tools: args.tool_parser.resolve(detected.tools),
        reasoning: args.reasoning_parser.resolve(detected.reasoning),
    };
    let state = state
        .with_output_format(output_format)
        .with_json_whitespace(args.json_whitespace)
        .with_keys(keys)
        .with_limits(RequestLimits {
            allowed_hosts,
            body_timeout: args.body_timeout,
            max_messages: args.max_messages,
        });
    let limits = ConnectionLimits {
        header_timeout: args.header_timeout,
        tls_handshake_timeout: args.tls_handshake_timeout,
        drain_timeout: args.drain_timeout,
        max_connections: args.max_connections,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "moeserve listening on {scheme}://{addr}")?;
            out.flush()?;
        }
        moeserve::api::server::serve(
            listener,
            state,
            tls,
            limits,
            moeserve::api::shutdown_signal(),
        )
        .await?;
        anyhow::Ok(())
    })?;
    // Handlers still blocked in the tokenizer or template pool are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = engine_thread.join();
    Ok(())
}

/// API keys from --api-keys-file and --api-key lines.
fn api_keys(args: &ServeArgs) -> anyhow::Result<moeserve::api::auth::Keys> {
    let mut key_lines = match &args.api_keys_file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => String::new(),
    };
    for line in &args.api_keys {
        key_lines.push('\n');
        key_lines.push_str(line);
    }
    moeserve::api::auth::Keys::parse(&key_lines).map_err(|e| anyhow::anyhow!("API keys: {e}"))
}
