//! Structured-output cost on Qwen3's real 151k vocabulary: building the grammar machinery (once per
//! model), compiling a schema (once per request, on the blocking pool) and, per generated token, one
//! mask + one accept (what the engine runs beside each forward pass) while a valid answer is produced —
//! for a JSON schema and for a forced tool call in Qwen's `<tool_call>` format.
//!
//! Needs the tokenizer: `scripts/fetch-qwen3-tokenizer.sh` (or set MOESERVE_QWEN3_TOKENIZER to a directory
//! holding tokenizer.json); skipped without it. `cargo bench --bench grammar`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use moeserve::engine::TokenConstraint;
use moeserve::grammar::{Constraint, Grammars, OutputStart, ToolCalls};
use moeserve::parsers::ToolFormat;
use moeserve::tokenizer::TextTokenizer;
use moeserve::weights::ModelSource;
use serde_json::json;

const VOCAB: usize = 151_936;
const EOS: [u32; 2] = [151_645, 151_643];

fn tokenizer() -> Option<TextTokenizer> {
    let dir = std::env::var("MOESERVE_QWEN3_TOKENIZER").unwrap_or_else(|_| {
        format!(
            "{}/.cache/moeserve/qwen3-tok/package/models",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let dir = std::path::PathBuf::from(dir);
    dir.join("tokenizer.json")
        .exists()
        .then(|| TextTokenizer::load(&ModelSource::Dir(dir)).ok())
        .flatten()
}

fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
            "address": {"type": "object", "properties": {
                "street": {"type": "string"}, "city": {"type": "string"},
                "country": {"enum": ["NO", "SE", "DK", "FI"]}},
                "required": ["street", "city", "country"], "additionalProperties": false}
        },
        "required": ["name", "age", "email", "tags", "address"],
        "additionalProperties": false
    })
}

const ANSWER: &str = r#"{"name": "Kari Nordmann", "age": 42, "email": "kari@example.no", "tags": ["admin", "ops", "on-call"], "address": {"street": "Storgata 1", "city": "Oslo", "country": "NO"}}"#;

/// Mask + accept for every token of `tokens` under a fresh matcher.
fn walk(mut m: Box<dyn TokenConstraint>, tokens: &[u32]) {
    for &t in tokens {
        let mask = m.mask().expect("mask");
        assert!(mask.allows(t as usize), "token {t} refused");
        m.accept(t).expect("accept");
    }
}

fn bench(c: &mut Criterion) {
    let Some(tok) = tokenizer() else {
        eprintln!("grammar bench skipped: run scripts/fetch-qwen3-tokenizer.sh");
        return;
    };
    let mut g = c.benchmark_group("grammar");
    g.sample_size(10);
    g.bench_function("build_grammars_151k_vocab", |b| {
        b.iter(|| Grammars::new(&tok, VOCAB, &EOS).unwrap())
    });
    let grammars = Grammars::new(&tok, VOCAB, &EOS).unwrap();
    let json = Constraint::JsonSchema(schema());
    g.bench_function("compile_schema", |b| {
        b.iter(|| grammars.compile(&json, OutputStart::default()).unwrap())
    });
    let answer = tok.encode(ANSWER, false).unwrap();
    g.throughput(Throughput::Elements(answer.len() as u64));
    g.bench_function(format!("json_schema_per_token_{}", answer.len()), |b| {
        b.iter_batched(
            || Box::new(grammars.compile(&json, OutputStart::default()).unwrap()),
            |m| walk(m, &answer),
            BatchSize::SmallInput,
        )
    });
    let calls = Constraint::ToolCalls(ToolCalls {
        format: ToolFormat::Hermes,
        tools: vec![("add_contact".into(), schema())],
        parallel: false,
        optional: false,
    });
    let call_text = format!(
        "<tool_call>\n{{\"name\": \"add_contact\", \"arguments\": {ANSWER}}}\n</tool_call>"
    );
    let call = tok.encode(&call_text, false).unwrap();
    g.throughput(Throughput::Elements(call.len() as u64));
    g.bench_function(format!("tool_call_per_token_{}", call.len()), |b| {
        b.iter_batched(
            || Box::new(grammars.compile(&calls, OutputStart::default()).unwrap()),
            |m| walk(m, &call),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
