//! Structured outputs on random-weight models: whatever the weights, a JSON schema constraint gives valid
//! JSON under the schema, and a forced tool call gives a call the output parser reads, with arguments
//! under the tool's schema — for every fixture family, at several seeds, sampling at temperature 1.

mod common;

use std::sync::Arc;

use common::small_call_schema;
use moeserve::engine::{generate_constrained, FinishReason, RequestParams, SamplingParams};
use moeserve::grammar::{Constraint, Grammars, JsonWhitespace, OutputStart, ToolCalls};
use moeserve::parsers::{ChatParser, Piece, ToolFormat};
use serde_json::{json, Value};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 6},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "alerts": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
            "ok": {"type": "boolean"}
        },
        "required": ["city", "unit", "days", "alerts", "ok"],
        "additionalProperties": false
    })
}

/// The checks a validator would make for [`schema`].
fn assert_valid(v: &Value, what: &str) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    assert_eq!(o.len(), 5, "{what}: {v}");
    assert!(
        o["city"].as_str().is_some_and(|c| c.chars().count() <= 6),
        "{what}: {v}"
    );
    assert!(
        matches!(o["unit"].as_str(), Some("celsius" | "fahrenheit")),
        "{what}: {v}"
    );
    assert!(
        o["days"].as_i64().is_some_and(|d| (1..=14).contains(&d)),
        "{what}: {v}"
    );
    let alerts = o["alerts"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {v}"));
    assert!(
        alerts.len() <= 3 && alerts.iter().all(Value::is_boolean),
        "{what}: {v}"
    );
    assert!(o["ok"].is_boolean(), "{what}: {v}");
}

/// Compact JSON: the fixtures' contexts are 128–512 tokens, and a random model spends many of them on
/// whatever whitespace is allowed.
fn compact(loaded: &moeserve::loader::LoadedModel) -> Grammars {
    let vocab = loaded.model.spec().vocab_size;
    Grammars::new(&loaded.tokenizer, vocab, &loaded.generation.eos_token_ids)
        .unwrap()
        .with_whitespace(JsonWhitespace::Compact)
}

fn sampling(seed: u64) -> RequestParams {
    RequestParams {
        max_tokens: 1000,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn random_models_under_a_schema_give_valid_json() {
    for family in common::FAMILIES {
        let loaded = Arc::new(common::load_fixture(family));
        let grammars = compact(&loaded);
        let prompt = common::reference(family).prompts[0].clone();
        for seed in 0..3 {
            let matcher = grammars
                .compile(&Constraint::JsonSchema(schema()), OutputStart::default())
                .unwrap();
            let out = generate_constrained(
                &loaded,
                prompt.clone(),
                sampling(seed),
                Some(Box::new(matcher)),
            )
            .unwrap();
            let what = format!("{family} seed {seed}");
            assert_eq!(
                out.finish_reason,
                FinishReason::Stop,
                "{what}: {:?}",
                out.text
            );
            let v: Value = serde_json::from_str(&out.text)
                .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", out.text));
            assert_valid(&v, &what);
        }
    }
}

/// A required call in the Qwen (hermes) format — markers as plain text in these small vocabularies —
/// comes out as one or more calls the parser reads, arguments under the schema.
#[test]
fn random_models_forced_to_call_a_tool_give_parseable_calls() {
    let mut covered = std::collections::HashMap::new();
    for family in common::FAMILIES {
        let loaded = Arc::new(common::load_fixture(family));
        let grammars = compact(&loaded);
        let prompt = common::reference(family).prompts[1].clone();
        let context = loaded.model.spec().max_position_embeddings;
        for (seed, format) in [
            ToolFormat::Hermes,
            ToolFormat::KimiK2,
            ToolFormat::DeepSeekV3,
            ToolFormat::Mistral,
        ]
        .into_iter()
        .enumerate()
        {
            // Kimi's and DeepSeek's markers (single tokens in their real vocabularies) are ~140
            // characters here: they need the fixtures with 512 positions.
            if context < 512 && matches!(format, ToolFormat::KimiK2 | ToolFormat::DeepSeekV3) {
                continue;
            }
            *covered.entry(format!("{format:?}")).or_insert(0) += 1;
            let calls = ToolCalls {
                format,
                tools: vec![
                    ("get_weather".into(), small_call_schema()),
                    (
                        "noop".into(),
                        json!({"type": "object", "properties": {}, "additionalProperties": false}),
                    ),
                ],
                // A random model offered another call takes it as often as not.
                parallel: false,
                optional: false,
            };
            let matcher = grammars
                .compile(&Constraint::ToolCalls(calls), OutputStart::default())
                .unwrap();
            let out = generate_constrained(
                &loaded,
                prompt.clone(),
                sampling(seed as u64),
                Some(Box::new(matcher)),
            )
            .unwrap();
            let what = format!("{family} {format:?}: {:?}", out.text);
            assert_eq!(out.finish_reason, FinishReason::Stop, "{what}");
            let mut parser = ChatParser::new(None, Some(format), false);
            let mut pieces = parser.push(&out.text);
            pieces.extend(parser.finish());
            let calls: Vec<_> = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::ToolCall(c) => Some(c),
                    _ => None,
                })
                .collect();
            assert!(!calls.is_empty(), "{what}");
            assert!(
                pieces.iter().all(|p| matches!(p, Piece::ToolCall(_))),
                "only calls: {what}"
            );
            for c in calls {
                let args: Value = serde_json::from_str(&c.arguments).unwrap();
                match c.name.as_str() {
                    "get_weather" => {
                        let o = args.as_object().unwrap();
                        assert_eq!(o.len(), 2, "{what}");
                        assert!(o["city"].as_str().is_some_and(|c| c.chars().count() <= 4));
                        assert!(o["days"].as_i64().is_some_and(|d| (1..=9).contains(&d)));
                    }
                    "noop" => assert_eq!(args, json!({}), "{what}"),
                    other => panic!("unknown tool {other}: {what}"),
                }
            }
        }
    }
    assert!(
        covered.len() == 4 && covered.values().all(|&n| n >= 3),
        "{covered:?}"
    );
}

/// Schemas llguidance cannot enforce are refused with a message that names the problem, not the schema.
#[test]
fn unsupported_schemas_are_refused_without_echoing_them() {
    let loaded = common::load_fixture("qwen3_moe");
    let vocab = loaded.model.spec().vocab_size;
    let grammars =
        Grammars::new(&loaded.tokenizer, vocab, &loaded.generation.eos_token_ids).unwrap();
    for bad in [
        json!({"type": "object", "properties": {"CANARY_KEY": {"not": {"type": "string"}}}}),
        json!({"type": "string", "format": "CANARY_FORMAT"}),
        json!({"$ref": "https://CANARY.example/schema.json"}),
        json!(false),
    ] {
        let e = grammars
            .compile(&Constraint::JsonSchema(bad.clone()), OutputStart::default())
            .err()
            .unwrap_or_else(|| panic!("accepted {bad}"));
        let text = e.to_string();
        assert!(!text.contains("CANARY"), "{text}");
        assert!(!text.is_empty());
    }
}
