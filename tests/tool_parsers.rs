//! Tool-call and reasoning parsing on real model output formats (`tests/fixtures/chat/tools/outputs.json`,
//! made by `scripts/make_tool_fixtures.py` from the formats' templates and vLLM's parsers): whole and fed in
//! small deltas, each output gives its expected content, reasoning and calls; calls whose name comes before
//! their arguments stream the arguments as they arrive.

use moeserve::parsers::{ChatParser, ParsedCall, Piece, ToolFormat, THINK};
use serde_json::Value;

fn format_of(name: &str) -> ToolFormat {
    match name {
        "qwen" => ToolFormat::Hermes,
        "kimi_k2" => ToolFormat::KimiK2,
        "deepseek_v3" => ToolFormat::DeepSeekV3,
        "deepseek_v3_1" => ToolFormat::DeepSeekV31,
        "mistral" => ToolFormat::Mistral,
        "mistral_v11" => ToolFormat::MistralV11,
        other => panic!("unknown format {other}"),
    }
}

/// `text` in deltas of `step` characters.
fn deltas(text: &str, step: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(step).map(|c| c.iter().collect()).collect()
}

#[test]
fn real_formats_parse_to_their_expected_calls() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat/tools/outputs.json");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 20);
    for case in &cases {
        let format = format_of(case["format"].as_str().unwrap());
        let text = case["text"].as_str().unwrap();
        for step in [1, 2, 3, 7, usize::MAX] {
            let mut p = ChatParser::new(Some(THINK), Some(format), false);
            let mut pieces = Vec::new();
            for d in deltas(text, step.min(text.chars().count().max(1))) {
                pieces.extend(p.push(&d));
            }
            pieces.extend(p.finish());
            let streamed_pieces = pieces
                .iter()
                .filter(|p| matches!(p, Piece::ToolCallArgs(_)))
                .count();
            let mut content = String::new();
            let mut reasoning = String::new();
            let mut calls = Vec::new();
            for piece in pieces {
                match piece {
                    Piece::Content(t) => content.push_str(&t),
                    Piece::Reasoning(t) => reasoning.push_str(&t),
                    Piece::ToolCall(c) => calls.push(c),
                    Piece::ToolCallBegin { id, name } => calls.push(ParsedCall {
                        id,
                        name,
                        arguments: String::new(),
                    }),
                    Piece::ToolCallArgs(t) => calls.last_mut().unwrap().arguments.push_str(&t),
                }
            }
            let what = format!("{} (deltas of {step}): {text}", case["format"]);
            let want_content = case["content"].as_str().unwrap_or("");
            assert_eq!(content, want_content, "content of {what}");
            let want_reasoning = case["reasoning_content"].as_str().unwrap_or("");
            assert_eq!(reasoning, want_reasoning, "reasoning of {what}");
            let want_calls = case["tool_calls"].as_array().unwrap();
            // Every format but Mistral's v3 list streams its calls: with one-character deltas the
            // arguments come in many pieces.
            if step == 1 && !want_calls.is_empty() && format != ToolFormat::Mistral {
                assert!(
                    streamed_pieces > 2,
                    "{what}: {streamed_pieces} argument pieces"
                );
            }
            assert_eq!(calls.len(), want_calls.len(), "calls of {what}");
            for (got, want) in calls.iter().zip(want_calls) {
                assert_eq!(got.name, want["name"].as_str().unwrap(), "{what}");
                let args: Value = serde_json::from_str(&got.arguments)
                    .unwrap_or_else(|e| panic!("{e}: {:?} in {what}", got.arguments));
                assert_eq!(args, want["arguments"], "{what}");
                if let Some(id) = want.get("id") {
                    assert_eq!(got.id.as_deref(), id.as_str(), "{what}");
                }
            }
        }
    }
}
