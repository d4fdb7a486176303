//! `/v1/chat/completions` answers. Each choice's text goes through the model's output parser
//! ([`crate::parsers::ChatParser`]): reasoning to `reasoning_content` (and `reasoning`), tool calls to
//! `tool_calls` (streamed as OpenAI does: the first piece of a call carries its id, type and name, the
//! arguments follow), the rest to `content`. A choice that called tools finishes with `tool_calls`.

use super::chat_request::ToolChoice;
use super::output::{finish_str, to_json, Chunks, Common, Output, PromptSide};
use super::response::{
    AssistantMessage, ChatChoice, ChatChunk, ChatCompletion, ChunkChoice, Delta, FunctionCall,
    FunctionDelta, ToolCall, ToolCallDelta, Usage,
};
use crate::engine::{FinishReason, TokenLogprob};
use crate::parsers::{ChatParser, ParsedCall, Piece, ReasoningMarkers, ToolFormat};

/// How one request's output is parsed.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChatParse {
    pub reasoning: Option<ReasoningMarkers>,
    /// The tool-call format, when tools are offered.
    pub tools: Option<ToolFormat>,
    /// The prompt ends inside an open reasoning block.
    pub in_reasoning: bool,
    /// The prompt ends with a closed (empty) reasoning block: no reasoning comes.
    pub reasoning_closed: bool,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
}

impl ChatParse {
    /// Nothing to parse: all text is content.
    pub(crate) fn is_plain(&self) -> bool {
        self.reasoning.is_none() && self.tools.is_none()
    }
}

/// One choice of a chat answer.
struct ChatChoiceState {
    parser: Option<ChatParser>,
    content: String,
    reasoning: String,
    calls: Vec<ToolCall>,
    /// A streamed call left out (`parallel_tool_calls: false` and one was made): its arguments too.
    skipping: bool,
    tokens: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
}

/// `/v1/chat/completions`.
pub(crate) struct ChatOutput {
    common: Common,
    parse: ChatParse,
    choices: Vec<ChatChoiceState>,
    /// vLLM's `prompt_logprobs` (collected answers only).
    prompt: PromptSide,
}

/// An id for a call the model did not name: Mistral's templates want nine letters and digits back,
/// others OpenAI's `call_…`.
pub(crate) fn call_id(format: Option<ToolFormat>) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    if format == Some(ToolFormat::Mistral) {
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..9)
            .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
            .collect()
    } else {
        let n: u128 = rng.random();
        format!("call_{:024x}", n & ((1u128 << 96) - 1))
    }
}

/// A new call of choice `c`: its entry, and (streaming) the delta that carries its id, type and name.
fn start_call(
    c: &mut ChatChoiceState,
    delta: &mut Delta,
    id: Option<String>,
    name: String,
    format: Option<ToolFormat>,
) {
    let call = ToolCall {
        id: id.unwrap_or_else(|| call_id(format)),
        kind: "function",
        function: FunctionCall {
            name,
            arguments: String::new(),
        },
    };
    delta.tool_calls.push(ToolCallDelta {
        index: c.calls.len(),
        id: Some(call.id.clone()),
        kind: Some("function"),
        function: FunctionDelta {
            name: Some(call.function.name.clone()),
            arguments: String::new(),
        },
    });
    c.calls.push(call);
}

/// More of the current call's arguments (merged into this delta's piece for that call when there is one).
fn add_arguments(c: &mut ChatChoiceState, delta: &mut Delta, text: &str) {
    let Some(call) = c.calls.last_mut() else {
        return;
    };
    call.function.arguments.push_str(text);
    let index = c.calls.len() - 1;
    match delta.tool_calls.last_mut() {
        Some(d) if d.index == index => d.function.arguments.push_str(text),
        _ => delta.tool_calls.push(ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: FunctionDelta {
                name: None,
                arguments: text.to_owned(),
            },
        }),
    }
}

impl ChatOutput {
    pub(crate) fn new(common: Common, choices: usize, prompt_len: usize, parse: ChatParse) -> Self {
        let choices = (0..choices)
            .map(|_| ChatChoiceState {
                parser: (!parse.is_plain())
                    .then(|| ChatParser::new(parse.reasoning, parse.tools, parse.in_reasoning)),
                content: String::new(),
                reasoning: String::new(),
                calls: Vec::new(),
                skipping: false,
                tokens: Vec::new(),
                finish: None,
            })
            .collect();
        Self {
            common,
            parse,
            choices,
            prompt: PromptSide::new(None, prompt_len),
        }
    }

    fn chunk(&self, choice: ChunkChoice) -> String {
        to_json(&ChatChunk {
            envelope: self.common.envelope("chat.completion.chunk"),
            choices: vec![choice],
            usage: self.common.chunk_usage(),
        })
    }

    /// Parses a piece of `choice`'s text; `end`: the choice finished (flush what the parser holds).
    fn pieces(&mut self, choice: usize, text: &str, end: bool) -> Vec<Piece> {
        let Some(c) = self.choices.get_mut(choice) else {
            return Vec::new();
        };
        match &mut c.parser {
            None if text.is_empty() => Vec::new(),
            None => vec![Piece::Content(text.to_owned())],
            Some(p) => {
                let mut out = p.push(text);
                if end {
                    out.extend(p.finish());
                }
                out
            }
        }
    }

    /// Files `pieces` under `choice`: collected, or as one stream chunk (with `tokens`' logprobs).
    fn emit(
        &mut self,
        choice: usize,
        pieces: Vec<Piece>,
        tokens: Vec<TokenLogprob>,
        out: &mut Chunks,
    ) {
        let (stream, logprobs) = (self.common.stream, self.common.logprobs);
        let format = self.parse.tools;
        let single = !self.parse.parallel_tool_calls;
        let Some(c) = self.choices.get_mut(choice) else {
            return;
        };
        let mut delta = Delta::default();
        for piece in pieces {
            match piece {
                Piece::Content(t) => delta.content.get_or_insert_with(String::new).push_str(&t),
                Piece::Reasoning(t) => delta
                    .reasoning_content
                    .get_or_insert_with(String::new)
                    .push_str(&t),
                Piece::ToolCall(ParsedCall {
                    id,
                    name,
                    arguments,
                }) => {
                    c.skipping = single && !c.calls.is_empty();
                    if !c.skipping {
                        // A call read whole: its start and all its arguments at once.
                        start_call(c, &mut delta, id, name, format);
                        add_arguments(c, &mut delta, &arguments);
                    }
                }
                Piece::ToolCallBegin { id, name } => {
                    // parallel_tool_calls: false keeps the first call
                    c.skipping = single && !c.calls.is_empty();
                    if !c.skipping {
                        start_call(c, &mut delta, id, name, format);
                    }
                }
                Piece::ToolCallArgs(text) => {
                    if !c.skipping {
                        add_arguments(c, &mut delta, &text);
                    }
                }
            }
        }
        if !stream {
            c.content
                .push_str(delta.content.as_deref().unwrap_or_default());
            c.reasoning
                .push_str(delta.reasoning_content.as_deref().unwrap_or_default());
            if logprobs {
                c.tokens.extend(tokens);
            }
            return;
        }
        let with_logprobs = logprobs && !tokens.is_empty();
        let empty = delta.content.is_none()
            && delta.reasoning_content.is_none()
            && delta.tool_calls.is_empty();
        if empty && !with_logprobs {
            return;
        }
        if empty {
            delta.content = Some(String::new());
        }
        delta.reasoning.clone_from(&delta.reasoning_content);
        let lp = with_logprobs.then(|| self.common.chat_logprobs(&tokens));
        out.push(self.chunk(ChunkChoice {
            index: choice,
            delta,
            logprobs: lp,
            finish_reason: None,
        }));
    }

    /// OpenAI's finish reason: `tool_calls` when the model called tools on its own (a named
    /// `tool_choice` finishes with `stop`, as OpenAI's does).
    fn finish_reason(&self, choice: usize, reason: FinishReason) -> &'static str {
        let called = self
            .choices
            .get(choice)
            .is_some_and(|c| !c.calls.is_empty());
        let named = matches!(self.parse.tool_choice, ToolChoice::Named(_));
        if reason == FinishReason::Stop && called && !named {
            "tool_calls"
        } else {
            finish_str(reason)
        }
    }
}

impl Output for ChatOutput {
    fn open(&mut self, out: &mut Chunks) {
        for index in 0..self.choices.len() {
            out.push(self.chunk(ChunkChoice {
                index,
                delta: Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..Default::default()
                },
                logprobs: None,
                finish_reason: None,
            }));
        }
    }

    fn delta(&mut self, choice: usize, text: String, tokens: Vec<TokenLogprob>, out: &mut Chunks) {
        let pieces = self.pieces(choice, &text, false);
        self.emit(choice, pieces, tokens, out);
    }

    fn prompt_logprobs(
        &mut self,
        _: usize,
        tokens: Vec<TokenLogprob>,
        ranks: Vec<u32>,
        _: &mut Chunks,
    ) {
        self.prompt.logprobs.extend(tokens);
        self.prompt.ranks.extend(ranks);
    }

    fn finish(&mut self, choice: usize, reason: FinishReason, text: String, out: &mut Chunks) {
        let pieces = self.pieces(choice, &text, true);
        self.emit(choice, pieces, Vec::new(), out);
        if let Some(c) = self.choices.get_mut(choice) {
            c.finish = Some(reason);
        }
        if self.common.stream {
            out.push(self.chunk(ChunkChoice {
                index: choice,
                delta: Delta::default(),
                logprobs: None,
                finish_reason: Some(self.finish_reason(choice, reason)),
            }));
        }
    }

    fn usage_chunk(&self, usage: Usage) -> String {
        to_json(&ChatChunk {
            envelope: self.common.envelope("chat.completion.chunk"),
            choices: Vec::new(),
            usage: Some(Some(usage)),
        })
    }

    fn body(&mut self, usage: Usage) -> String {
        let reasons: Vec<Option<&'static str>> = (0..self.choices.len())
            .map(|i| self.choices[i].finish.map(|r| self.finish_reason(i, r)))
            .collect();
        let common = &self.common;
        let choices = std::mem::take(&mut self.choices)
            .into_iter()
            .zip(reasons)
            .enumerate()
            .map(|(index, (c, finish_reason))| {
                let reasoning = (!c.reasoning.is_empty()).then_some(c.reasoning);
                // OpenAI: `content` is null beside tool calls when the model wrote nothing else.
                let content = (!c.content.is_empty() || c.calls.is_empty()).then_some(c.content);
                ChatChoice {
                    index,
                    logprobs: common.logprobs.then(|| common.chat_logprobs(&c.tokens)),
                    message: AssistantMessage {
                        role: "assistant",
                        content,
                        reasoning: reasoning.clone(),
                        reasoning_content: reasoning,
                        tool_calls: c.calls,
                    },
                    finish_reason,
                }
            })
            .collect();
        let prompt_logprobs = common
            .prompt_logprobs
            .then(|| common.ranked(&self.prompt.logprobs, &self.prompt.ranks));
        to_json(&ChatCompletion {
            envelope: common.envelope("chat.completion"),
            choices,
            usage,
            prompt_logprobs,
        })
    }
}
