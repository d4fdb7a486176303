//! `POST /v1/responses` (stateless) against `moeserve serve` on the embedded default model with Qwen2.5's
//! real chat template (hermes tool calls, no thinking block): the response object and its items, the streamed events in OpenAI's order with
//! sequence numbers and no `[DONE]`, function tools (forced calls as `function_call` items) and a second
//! turn sending the calls and their outputs back, and 400s for what would need stored state.

mod common;

use common::server::Server;
use serde_json::{json, Value};

/// A streamed response's events and its raw payloads.
async fn events(server: &Server, body: &Value) -> (Vec<Value>, String) {
    let payloads = server.post_sse("/v1/responses", body).await;
    let events = payloads
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    (events, payloads.join("\n"))
}

/// Qwen2.5's template: hermes tool calls, no thinking block.
fn server() -> Server {
    Server::with_chat_template("qwen2_5", &[])
}

fn weather_tool() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 4}},
            "required": ["city"], "additionalProperties": false}})
}

#[tokio::test]
async fn a_response_streamed_and_not() {
    let server = server();
    let body = json!({"model": "test-model", "instructions": "Be brief.", "input": "Hello there",
        "max_output_tokens": 6, "temperature": 0.0,
        "text": {"format": {"type": "text"}}});
    let (status, v) = server.post_json("/v1/responses", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "response");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["store"], false);
    let message = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "message")
        .cloned()
        .unwrap_or_else(|| panic!("a message item: {v}"));
    assert_eq!(message["role"], "assistant");
    let text = message["content"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(message["content"][0]["type"], "output_text");
    let used = v["usage"]["output_tokens"].as_u64().unwrap();
    assert!((1..=6).contains(&used), "{v}");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    // Stopped by max_output_tokens, or by the model's end of turn.
    let (status, closing) = if used == 6 {
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(message["status"], "incomplete", "the message was cut off");
        ("incomplete", "response.incomplete")
    } else {
        assert!(v["incomplete_details"].is_null());
        ("completed", "response.completed")
    };
    assert_eq!(v["status"], status);

    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    let (events, raw) = events(&server, &streamed).await;
    assert!(!raw.contains("[DONE]"), "{raw}");
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..2],
        ["response.created", "response.in_progress"],
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&closing), "{kinds:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64, "{e}");
    }
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, text);
    let done = events
        .iter()
        .find(|e| e["type"] == "response.output_text.done")
        .unwrap();
    assert_eq!(done["text"], text.as_str());
    let last = events.last().unwrap();
    let final_text = last["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "message")
        .map(|m| m["content"][0]["text"].clone());
    assert_eq!(final_text, Some(Value::String(text)));
}

#[tokio::test]
async fn forced_function_calls_are_function_call_items_and_come_back() {
    let server = server();
    let body = json!({"model": "test-model", "input": [{"role": "user", "content": "Weather?"}],
        "tools": [weather_tool()], "tool_choice": "required", "parallel_tool_calls": false,
        "max_output_tokens": 120, "temperature": 0.0});
    let mut body = body.clone();
    body["input"] = json!([
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}
    ]);
    let (status, v) = server.post_json("/v1/responses", &body).await;
    assert_eq!(status, 200, "{v}");
    let call = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .cloned()
        .unwrap_or_else(|| panic!("a function_call item: {v}"));
    assert_eq!(call["name"], "get_weather");
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(
        args["city"]
            .as_str()
            .is_some_and(|c| c.chars().count() <= 4),
        "{args}"
    );

    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    let (events, _) = events(&server, &streamed).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let done = events
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap_or_else(|| panic!("{kinds:?}"));
    assert_eq!(done["arguments"], call["arguments"]);
    assert!(kinds.contains(&"response.output_item.added"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");

    // The next turn: the call and its output go back as input items.
    let next = json!({"model": "test-model", "tools": [weather_tool()], "max_output_tokens": 4,
    "input": [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": call["call_id"], "name": "get_weather",
         "arguments": call["arguments"]},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    ]});
    let (status, v) = server.post_json("/v1/responses", &next).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn stored_state_and_unknown_items_are_refused_by_name() {
    let server = server();
    let base = json!({"model": "test-model", "input": "hi"});
    for (extra, param) in [
        (json!({"store": true}), "store"),
        (
            json!({"previous_response_id": "resp_123"}),
            "previous_response_id",
        ),
        (json!({"background": true}), "background"),
        (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
        (
            json!({"input": [{"type": "image_generation_call"}]}),
            "input[0].type",
        ),
        (
            json!({"text": {"format": {"type": "yaml"}}}),
            "text.format.type",
        ),
    ] {
        let mut body = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = server.post_json("/v1/responses", &body).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
}
