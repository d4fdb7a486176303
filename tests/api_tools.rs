//! Tool calling and structured outputs through a real client (`async-openai`) against `moeserve serve`
//! on the embedded default model (a tiny random Qwen3-MoE with a 4k context) with Qwen3's real chat template (`--chat-template`, hermes `<tool_call>`
//! format): a forced call comes back as `tool_calls` (streamed in OpenAI's pieces and not, `n` > 1), a
//! named one finishes with `stop`, `response_format` gives JSON under the schema, a conversation with
//! earlier calls and tool results renders, and what cannot be honoured is a 400 naming the field.

mod common;

use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls, ChatCompletionNamedToolChoice,
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
    ChatCompletionRequestToolMessageArgs, ChatCompletionRequestUserMessageArgs, ChatCompletionTool,
    ChatCompletionToolChoiceOption, ChatCompletionTools, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, FinishReason, FunctionCall, FunctionName, FunctionObjectArgs,
    ResponseFormat, ResponseFormatJsonSchema, ToolChoiceOptions,
};
use common::server::Server;
use common::small_call_schema;
use futures::StreamExt;
use serde_json::{json, Value};

fn server() -> Server {
    Server::with_chat_template("qwen3", &[])
}

fn assert_weather_args(arguments: &str) {
    let v: Value = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{e}: {arguments}"));
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 2, "{v}");
    assert!(
        o["city"].as_str().is_some_and(|c| c.chars().count() <= 4),
        "{v}"
    );
    assert!(
        o["days"].as_i64().is_some_and(|d| (1..=9).contains(&d)),
        "{v}"
    );
}

fn tools() -> Vec<ChatCompletionTools> {
    let f = |name: &str, params: Value| {
        ChatCompletionTools::Function(ChatCompletionTool {
            function: FunctionObjectArgs::default()
                .name(name)
                .description("test tool")
                .parameters(params)
                .build()
                .unwrap(),
        })
    };
    vec![
        f("get_weather", small_call_schema()),
        f(
            "noop",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ),
    ]
}

fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn request(choice: ChatCompletionToolChoiceOption, n: u8) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("test-model")
        .messages(vec![user("What is the weather?")])
        .tools(tools())
        .tool_choice(choice)
        .parallel_tool_calls(false)
        .max_completion_tokens(90u32)
        .temperature(0.0)
        .n(n)
        .build()
        .unwrap()
}

/// Drops the thinking block (Qwen3's template then writes an empty one): the answer comes at once.
fn no_thinking(req: &CreateChatCompletionRequest) -> Value {
    let mut body = serde_json::to_value(req).unwrap();
    body["chat_template_kwargs"] = json!({"enable_thinking": false});
    body
}

#[tokio::test]
async fn required_tool_calls_come_back_as_tool_calls_streamed_and_not() {
    let server = server();
    let c = server.openai_client();
    let req = request(
        ChatCompletionToolChoiceOption::Mode(ToolChoiceOptions::Required),
        2,
    );
    let resp = c
        .chat()
        .create_byot::<Value, async_openai::types::chat::CreateChatCompletionResponse>(no_thinking(
            &req,
        ))
        .await
        .unwrap();
    assert_eq!(resp.choices.len(), 2);
    let mut first_call: Option<ChatCompletionMessageToolCall> = None;
    for choice in &resp.choices {
        assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(choice.message.content, None, "only calls");
        let calls = choice.message.tool_calls.as_ref().expect("tool_calls");
        assert_eq!(calls.len(), 1, "parallel_tool_calls: false");
        let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
            panic!("a function call")
        };
        assert!(call.id.starts_with("call_"), "{}", call.id);
        match call.function.name.as_str() {
            "get_weather" => assert_weather_args(&call.function.arguments),
            "noop" => assert_eq!(call.function.arguments, "{}"),
            other => panic!("unknown tool {other}"),
        }
        first_call.get_or_insert(call.clone());
    }
    // Streamed: the call arrives as OpenAI sends it (id, type, name first; arguments in pieces), the
    // same call as collected (greedy), finish_reason tool_calls.
    let mut streamed = req.clone();
    streamed.n = Some(1);
    let mut body = no_thinking(&streamed);
    body["stream"] = true.into();
    let mut stream = c
        .chat()
        .create_stream_byot::<Value, async_openai::types::chat::CreateChatCompletionStreamResponse>(
            body,
        )
        .await
        .unwrap();
    let (mut id, mut name, mut args, mut finish) = (None, String::new(), String::new(), None);
    let mut pieces = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for choice in chunk.choices {
            for tc in choice.delta.tool_calls.unwrap_or_default() {
                assert_eq!(tc.index, 0);
                if let Some(i) = tc.id {
                    assert!(id.is_none(), "the id comes once");
                    id = Some(i);
                }
                if let Some(f) = tc.function {
                    name.push_str(&f.name.unwrap_or_default());
                    let a = f.arguments.unwrap_or_default();
                    pieces += usize::from(!a.is_empty());
                    args.push_str(&a);
                }
            }
            if let Some(r) = choice.finish_reason {
                finish = Some(r);
            }
        }
    }
    let want = first_call.unwrap();
    assert!(id.is_some());
    assert_eq!(name, want.function.name);
    assert_eq!(args, want.function.arguments);
    assert!(
        pieces > 1,
        "the arguments stream as they are generated ({pieces} pieces)"
    );
    assert_eq!(finish, Some(FinishReason::ToolCalls));
}

#[tokio::test]
async fn a_named_tool_is_the_one_called_and_finishes_with_stop() {
    let server = server();
    let choice = ChatCompletionToolChoiceOption::Function(ChatCompletionNamedToolChoice {
        function: FunctionName {
            name: "get_weather".into(),
        },
    });
    let (status, v) = server
        .post_json("/v1/chat/completions", &no_thinking(&request(choice, 1)))
        .await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "named: as OpenAI");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_weather_args(call["function"]["arguments"].as_str().unwrap());
}

#[tokio::test]
async fn json_schema_responses_follow_the_schema_streamed_and_not() {
    let server = server();
    let c = server.openai_client();
    let req = CreateChatCompletionRequestArgs::default()
        .model("test-model")
        .messages(vec![user("Weather as JSON")])
        .response_format(ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                description: None,
                name: "weather".into(),
                schema: small_call_schema(),
                strict: Some(false),
            },
        })
        .max_completion_tokens(90u32)
        .temperature(0.0)
        .build()
        .unwrap();
    let resp = c
        .chat()
        .create_byot::<Value, async_openai::types::chat::CreateChatCompletionResponse>(no_thinking(
            &req,
        ))
        .await
        .unwrap();
    let content = resp.choices[0].message.content.clone().unwrap();
    assert_weather_args(&content);
    assert_eq!(resp.choices[0].finish_reason, Some(FinishReason::Stop));
    let mut body = no_thinking(&req);
    body["stream"] = true.into();
    let mut stream = c
        .chat()
        .create_stream_byot::<Value, async_openai::types::chat::CreateChatCompletionStreamResponse>(
            body,
        )
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk.unwrap().choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or_default());
        }
    }
    assert_eq!(text, content);
}

/// An agent's second turn: the assistant's earlier call and the tool's result go back into the template.
#[tokio::test]
async fn earlier_calls_and_tool_results_render_into_the_next_turn() {
    let server = server();
    let call = ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
        id: "call_1".into(),
        function: FunctionCall {
            name: "get_weather".into(),
            arguments: r#"{"city":"Oslo","days":2}"#.into(),
        },
    });
    let assistant: ChatCompletionRequestMessage =
        ChatCompletionRequestAssistantMessageArgs::default()
            .tool_calls(vec![call])
            .build()
            .unwrap()
            .into();
    let tool: ChatCompletionRequestMessage = ChatCompletionRequestToolMessageArgs::default()
        .tool_call_id("call_1")
        .content("sunny, 21 C")
        .build()
        .unwrap()
        .into();
    let req = CreateChatCompletionRequestArgs::default()
        .model("test-model")
        .messages(vec![user("Weather in Oslo?"), assistant, tool])
        .tools(tools())
        .max_completion_tokens(5u32)
        .build()
        .unwrap();
    // The prompt holds the earlier call's arguments and the result, as Qwen3's template writes them.
    let mut tokenize = serde_json::to_value(&req).unwrap();
    tokenize
        .as_object_mut()
        .unwrap()
        .retain(|k, _| k == "messages" || k == "model");
    let toks: Value = reqwest::Client::new()
        .post(server.url("/tokenize"))
        .json(&tokenize)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text: Value = reqwest::Client::new()
        .post(server.url("/detokenize"))
        .json(&json!({"tokens": toks["tokens"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prompt = text["prompt"].as_str().unwrap();
    assert!(
        prompt.contains(
            r#"<tool_call>
{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}
</tool_call>"#
        ),
        "{prompt}"
    );
    assert!(
        prompt.contains("<tool_response>\nsunny, 21 C\n</tool_response>"),
        "{prompt}"
    );
    let (status, v) = server
        .post_json("/v1/chat/completions", &serde_json::to_value(&req).unwrap())
        .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn what_cannot_be_honoured_is_a_400_naming_the_field() {
    let server = server();
    let base = json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (body, param) in [
        (
            with(
                json!({"response_format": {"type": "json_schema", "json_schema":
                {"name": "x", "schema": {"type": "object", "properties": {"CANARY": {"not": {}}}}}}}),
            ),
            "response_format.json_schema.schema",
        ),
        (
            with(
                json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            ),
            "tool_choice.function.name",
        ),
        (
            with(
                json!({"tools": [{"type": "function", "function": {"name": "f",
                "parameters": {"type": "object", "properties": {"a": {"type": "string", "format": "CANARY"}}}}}],
                "tool_choice": "required"}),
            ),
            "tools[0].function.parameters",
        ),
        (
            with(json!({"tools": tools(), "tool_choice": "required",
                "response_format": {"type": "json_object"}})),
            "response_format",
        ),
    ] {
        let (status, v) = server.post_json("/v1/chat/completions", &body).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(!v.to_string().contains("CANARY"), "{v}");
    }
}

/// A thinking model whose template opens the reasoning block (as DeepSeek-R1's and Qwen3-Thinking's do):
/// what it writes before `</think>` is `reasoning_content` (and `reasoning`), streamed as such, not
/// `content`.
#[tokio::test]
async fn reasoning_goes_to_reasoning_content() {
    let server = Server::with_chat_template("thinking_test", &[]);
    let body = json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "temperature": 0.0, "ignore_eos": true});
    let (status, v) = server.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let message = &v["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().unwrap_or_default();
    assert!(!reasoning.is_empty(), "{v}");
    assert_eq!(message["reasoning"], message["reasoning_content"]);
    assert_eq!(message["content"], "", "{v}");
    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    let mut got = String::new();
    for line in server.post_sse("/v1/chat/completions", &streamed).await {
        if line == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&line).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        assert!(
            delta["content"].as_str().unwrap_or_default().is_empty(),
            "{chunk}"
        );
        got.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
    }
    assert_eq!(got, reasoning);
}

/// vLLM's guided decoding fields, on completions and chat: the output is one of the choices, matches the
/// regex, or is JSON under the schema — whatever the random weights.
#[tokio::test]
async fn vllm_guided_decoding_fields_constrain_the_output() {
    let server = server();
    let complete = |extra: Value| {
        let mut body = json!({"model": "test-model", "prompt": "Answer:", "max_tokens": 40,
            "temperature": 1.0, "seed": 7, "n": 3});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let post_to = |path: &'static str, body: Value| {
        let url = server.url(path);
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = post_to(
        "/v1/completions",
        complete(json!({"guided_choice": ["positive", "negative", "neutral"]})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    for t in texts(&v) {
        assert!(
            ["positive", "negative", "neutral"].contains(&t.as_str()),
            "{t:?}"
        );
    }
    let (status, v) = post_to(
        "/v1/completions",
        complete(json!({"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}/x"}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    for t in texts(&v) {
        let b = t.as_bytes();
        assert!(
            b.len() == 8
                && b[..3].iter().all(u8::is_ascii_digit)
                && b[3] == b'-'
                && b[4..6].iter().all(u8::is_ascii_lowercase)
                && &b[6..] == b"/x",
            "{t:?}"
        );
    }
    let chat = json!({"model": "test-model", "messages": [{"role": "user", "content": "Weather?"}],
        "chat_template_kwargs": {"enable_thinking": false}, "max_tokens": 90, "temperature": 0.0,
        "guided_json": small_call_schema()});
    let (status, v) = post_to("/v1/chat/completions", chat.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_weather_args(v["choices"][0]["message"]["content"].as_str().unwrap());
    let mut both = chat;
    both["response_format"] = json!({"type": "json_object"});
    let (status, v) = post_to("/v1/chat/completions", both).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "guided_json");
}
