//! `/v1/responses` answers: the one choice's parsed output as Responses API items — `reasoning`,
//! `message` (`output_text`), `function_call` — collected into a `response` object, or streamed as the
//! typed events OpenAI sends (`response.created`, `response.output_item.added`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`, …, `response.completed`),
//! each with its `sequence_number`, and no `[DONE]`.

use serde::Serialize;
use serde_json::{json, Value};

use super::chat_output::{call_id, ChatParse};
use super::output::{to_json, Chunks, Common, Output};
use super::response::Usage;
use super::responses::ResponsesSettings;
use crate::engine::{FinishReason, TokenLogprob};
use crate::parsers::{ChatParser, Piece};

/// The per-token events, typed (the rest are rare and built as JSON values).
#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    delta: &'a str,
    sequence_number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<[(); 0]>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Message,
    Reasoning,
    FunctionCall,
}

/// The output item text is going into (a function call's text is its arguments).
struct OpenItem {
    kind: ItemKind,
    id: String,
    text: String,
    /// Function calls: their call id and name.
    call_id: String,
    name: String,
}

pub(crate) struct ResponsesOutput {
    common: Common,
    settings: ResponsesSettings,
    parse: ChatParse,
    parser: Option<ChatParser>,
    /// Finished output items, in order.
    items: Vec<Value>,
    open: Option<OpenItem>,
    finish: Option<FinishReason>,
    sequence: u64,
    /// A call left out (`parallel_tool_calls: false` and one was made), with its arguments.
    skipping: bool,
}

fn item_id(prefix: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{prefix}_{n:032x}")
}

impl ResponsesOutput {
    pub(crate) fn new(common: Common, settings: ResponsesSettings, parse: ChatParse) -> Self {
        let parser = (!parse.is_plain())
            .then(|| ChatParser::new(parse.reasoning, parse.tools, parse.in_reasoning));
        Self {
            common,
            settings,
            parse,
            parser,
            items: Vec::new(),
            open: None,
            finish: None,
            sequence: 0,
            skipping: false,
        }
    }

    /// Sends `event` (with the next sequence number) when streaming.
    fn emit(&mut self, mut event: Value, out: &mut Chunks) {
        if self.common.stream {
            event["sequence_number"] = self.sequence.into();
            self.sequence += 1;
            out.push(to_json(&event));
        }
    }

    /// The response object in `status`.
    fn response(&self, status: &str, usage: Option<Usage>) -> Value {
        let s = &self.settings;
        let incomplete = (self.finish == Some(FinishReason::Length))
            .then(|| json!({"reason": "max_output_tokens"}));
        json!({
            "id": self.common.id,
            "object": "response",
            "created_at": self.common.created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": null,
            "max_output_tokens": s.max_output_tokens,
            "model": &*self.common.state.model_name,
            "output": self.items,
            "parallel_tool_calls": s.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": s.temperature,
            "text": {"format": s.text_format},
            "tool_choice": s.tool_choice,
            "tools": s.tools,
            "top_p": s.top_p,
            "truncation": "disabled",
            "usage": usage.map(|u| json!({
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens":
                    u.prompt_tokens_details.map_or(0, |d| d.cached_tokens)},
                "output_tokens": u.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.total_tokens,
            })),
            "metadata": {},
        })
    }

    /// The open item as a finished output item.
    fn item_value(item: &OpenItem, status: &str) -> Value {
        match item.kind {
            ItemKind::Message => json!({
                "type": "message", "id": item.id, "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}],
            }),
            ItemKind::Reasoning => json!({
                "type": "reasoning", "id": item.id, "summary": [],
                "content": [{"type": "reasoning_text", "text": item.text}],
            }),
            ItemKind::FunctionCall => json!({
                "type": "function_call", "id": item.id, "call_id": item.call_id, "name": item.name,
                "arguments": item.text, "status": status,
            }),
        }
    }

    /// Closes the open item (its `done` events), if any; `incomplete`: the output was cut off in it.
    fn close(&mut self, incomplete: bool, out: &mut Chunks) {
        let Some(item) = self.open.take() else {
            return;
        };
        let index = self.items.len();
        let status = if incomplete {
            "incomplete"
        } else {
            "completed"
        };
        let done = Self::item_value(&item, status);
        match item.kind {
            ItemKind::Message => {
                let part = json!({"type": "output_text", "text": item.text, "annotations": [], "logprobs": []});
                self.emit(
                    json!({"type": "response.output_text.done", "item_id": item.id,
                    "output_index": index, "content_index": 0, "text": item.text, "logprobs": []}),
                    out,
                );
                self.emit(
                    json!({"type": "response.content_part.done", "item_id": item.id,
                    "output_index": index, "content_index": 0, "part": part}),
                    out,
                );
            }
            ItemKind::Reasoning => {
                self.emit(
                    json!({"type": "response.reasoning_text.done", "item_id": item.id,
                    "output_index": index, "content_index": 0, "text": item.text}),
                    out,
                );
            }
            ItemKind::FunctionCall => {
                self.emit(
                    json!({"type": "response.function_call_arguments.done", "item_id": item.id,
                    "output_index": index, "arguments": item.text, "name": item.name}),
                    out,
                );
            }
        }
        self.emit(
            json!({"type": "response.output_item.done", "output_index": index, "item": done}),
            out,
        );
        self.items.push(done);
    }

    /// Text of `kind`: into the open item of that kind (opening one, closing another, as needed).
    fn text(&mut self, kind: ItemKind, text: &str, out: &mut Chunks) {
        if self.open.as_ref().is_some_and(|o| o.kind != kind) {
            self.close(false, out);
        }
        let index = self.items.len();
        if self.open.is_none() {
            let item = OpenItem {
                kind,
                id: item_id(if kind == ItemKind::Message {
                    "msg"
                } else {
                    "rs"
                }),
                text: String::new(),
                call_id: String::new(),
                name: String::new(),
            };
            let added = match kind {
                ItemKind::Message => {
                    json!({"type": "message", "id": item.id, "status": "in_progress",
                    "role": "assistant", "content": []})
                }
                _ => json!({"type": "reasoning", "id": item.id, "summary": []}),
            };
            self.emit(
                json!({"type": "response.output_item.added", "output_index": index, "item": added}),
                out,
            );
            if kind == ItemKind::Message {
                self.emit(json!({"type": "response.content_part.added", "item_id": item.id,
                    "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}), out);
            }
            self.open = Some(item);
        }
        if self.common.stream {
            if let Some(item) = &self.open {
                let event = TextDelta {
                    kind: match kind {
                        ItemKind::Message => "response.output_text.delta",
                        _ => "response.reasoning_text.delta",
                    },
                    item_id: &item.id,
                    output_index: index,
                    content_index: 0,
                    delta: text,
                    sequence_number: self.sequence,
                    logprobs: (kind == ItemKind::Message).then_some([]),
                };
                out.push(to_json(&event));
                self.sequence += 1;
            }
        }
        if let Some(item) = &mut self.open {
            item.text.push_str(text);
        }
    }

    /// A call begins: its item, added (arguments follow in [`Self::call_args`]).
    fn call_begin(&mut self, id: Option<String>, name: String, out: &mut Chunks) {
        self.close(false, out);
        let index = self.items.len();
        let item = OpenItem {
            kind: ItemKind::FunctionCall,
            id: item_id("fc"),
            text: String::new(),
            call_id: id.unwrap_or_else(|| call_id(self.parse.tools)),
            name,
        };
        let added = Self::item_value(&item, "in_progress");
        self.emit(
            json!({"type": "response.output_item.added", "output_index": index, "item": added}),
            out,
        );
        self.open = Some(item);
    }

    /// More of the open call's arguments.
    fn call_args(&mut self, text: &str, out: &mut Chunks) {
        let index = self.items.len();
        let Some(item) = self
            .open
            .as_mut()
            .filter(|o| o.kind == ItemKind::FunctionCall)
        else {
            return;
        };
        item.text.push_str(text);
        let event = json!({"type": "response.function_call_arguments.delta", "item_id": item.id,
            "output_index": index, "delta": text});
        self.emit(event, out);
    }

    /// A call was made (finished or open).
    fn called(&self) -> bool {
        self.items.iter().any(|i| i["type"] == "function_call")
            || self
                .open
                .as_ref()
                .is_some_and(|o| o.kind == ItemKind::FunctionCall)
    }

    fn pieces(&mut self, pieces: Vec<Piece>, out: &mut Chunks) {
        let single = !self.parse.parallel_tool_calls;
        for piece in pieces {
            match piece {
                Piece::Content(t) => self.text(ItemKind::Message, &t, out),
                Piece::Reasoning(t) => self.text(ItemKind::Reasoning, &t, out),
                Piece::ToolCall(c) => {
                    self.skipping = single && self.called();
                    if !self.skipping {
                        self.call_begin(c.id, c.name, out);
                        self.call_args(&c.arguments, out);
                    }
                }
                Piece::ToolCallBegin { id, name } => {
                    self.skipping = single && self.called();
                    if !self.skipping {
                        self.call_begin(id, name, out);
                    }
                }
                Piece::ToolCallArgs(t) => {
                    if !self.skipping {
                        self.call_args(&t, out);
                    }
                }
            }
        }
    }
}

impl Output for ResponsesOutput {
    fn open(&mut self, out: &mut Chunks) {
        let r = self.response("in_progress", None);
        self.emit(json!({"type": "response.created", "response": r}), out);
        let r = self.response("in_progress", None);
        self.emit(json!({"type": "response.in_progress", "response": r}), out);
    }

    fn delta(&mut self, _: usize, text: String, _: Vec<TokenLogprob>, out: &mut Chunks) {
        let pieces = match &mut self.parser {
            Some(p) => p.push(&text),
            None if text.is_empty() => Vec::new(),
            None => vec![Piece::Content(text)],
        };
        self.pieces(pieces, out);
    }

    fn prompt_logprobs(&mut self, _: usize, _: Vec<TokenLogprob>, _: Vec<u32>, _: &mut Chunks) {}

    fn finish(&mut self, _: usize, reason: FinishReason, text: String, out: &mut Chunks) {
        let pieces = match &mut self.parser {
            Some(p) => {
                let mut v = p.push(&text);
                v.extend(p.finish());
                v
            }
            None if text.is_empty() => Vec::new(),
            None => vec![Piece::Content(text)],
        };
        self.pieces(pieces, out);
        self.close(reason == FinishReason::Length, out);
        self.finish = Some(reason);
    }

    fn usage_chunk(&self, _: Usage) -> String {
        String::new()
    }

    fn closing(&mut self, usage: Usage, _: bool, out: &mut Chunks) {
        let (kind, status) = match self.finish {
            Some(FinishReason::Length) => ("response.incomplete", "incomplete"),
            Some(FinishReason::Abort) => ("response.failed", "failed"),
            _ => ("response.completed", "completed"),
        };
        let r = self.response(status, Some(usage));
        self.emit(json!({"type": kind, "response": r}), out);
    }

    fn body(&mut self, usage: Usage) -> String {
        let status = match self.finish {
            Some(FinishReason::Length) => "incomplete",
            Some(FinishReason::Abort) => "failed",
            _ => "completed",
        };
        to_json(&self.response(status, Some(usage)))
    }
}
