//! One formatter per kind of answer: engine events of each choice (text deltas with their tokens, finish)
//! become OpenAI's wire shapes ([`super::response`]) — stream chunks as they come, or one response body
//! when collected. Chat formatting also splits reasoning and tool calls out of the text
//! ([`super::chat_output`]); completions add text offsets (and, with `echo`, the prompt).

use super::response::{
    ChatChoice, ChatChunk, ChatCompletion, ChatLogprobs, ChatTokenLogprob, ChunkChoice, Completion,
    CompletionChoice, CompletionLogprobs, Delta, Envelope, TopLogprob, TopMap, Usage,
};
use super::AppState;
use crate::engine::{FinishReason, TokenLogprob};

/// What a formatter emits while streaming: serialized JSON chunks, in order.
pub type Chunks = Vec<String>;

/// Turns one request's engine events into OpenAI's shapes. `stream` chunks go to `out`; otherwise the
/// formatter accumulates and [`Output::body`] gives the whole response.
pub trait Output: Send {
    /// Chunks that open a stream (chat: the assistant role of every choice).
    fn open(&mut self, _out: &mut Chunks) {}
    /// New text of `choice` and the tokens that produced it.
    fn delta(&mut self, choice: usize, text: String, tokens: Vec<TokenLogprob>, out: &mut Chunks);
    /// `choice` ended with `text` as its last piece.
    fn finish(&mut self, choice: usize, reason: FinishReason, text: String, out: &mut Chunks);
    /// The closing usage chunk of a stream.
    fn usage_chunk(&self, usage: Usage) -> String;
    /// The collected response.
    fn body(&mut self, usage: Usage) -> String;
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Our response types hold only strings, numbers and lists: serializing them cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

pub fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

/// What both formatters share: the envelope's fields and token-text lookups.
pub struct Common {
    pub state: AppState,
    pub id: String,
    pub created: u64,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
}

impl Common {
    fn envelope(&self, object: &'static str) -> Envelope<'_> {
        Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.state.model_name,
            system_fingerprint: None,
        }
    }

    /// `usage` of an ordinary chunk: `null` when the client asked for usage (it comes last), else absent.
    fn chunk_usage(&self) -> Option<Option<Usage>> {
        self.include_usage.then_some(None)
    }

    fn token_str(&self, id: u32) -> String {
        self.state
            .engine
            .loaded
            .tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
    }

    /// A token's own bytes (not those of the "�" a part of a character decodes to).
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.state.engine.loaded.tokenizer.token_bytes(id)
    }

    fn chat_logprobs(&self, tokens: &[TokenLogprob]) -> ChatLogprobs {
        ChatLogprobs {
            content: tokens
                .iter()
                .map(|t| ChatTokenLogprob {
                    token: self.token_str(t.token),
                    logprob: t.logprob,
                    bytes: self.token_bytes(t.token),
                    top_logprobs: t
                        .top
                        .iter()
                        .map(|&(id, logprob)| TopLogprob {
                            token: self.token_str(id),
                            logprob,
                            bytes: self.token_bytes(id),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Legacy completions' logprobs; `offsets[i]` is token `i`'s `text_offset`.
    fn completion_logprobs(
        &self,
        tokens: &[TokenLogprob],
        offsets: &[usize],
    ) -> CompletionLogprobs {
        CompletionLogprobs {
            tokens: tokens.iter().map(|t| self.token_str(t.token)).collect(),
            token_logprobs: tokens.iter().map(|t| Some(t.logprob)).collect(),
            top_logprobs: tokens
                .iter()
                .map(|t| {
                    Some(TopMap(
                        t.top
                            .iter()
                            .map(|&(id, lp)| (self.token_str(id), lp))
                            .collect(),
                    ))
                })
                .collect(),
            text_offset: offsets.to_vec(),
        }
    }
}

/// Where each token's text starts in a choice's text, as OpenAI's `text_offset` (in characters, as Python
/// indexes the string): the length of the text released before the token. A token whose bytes do not yet
/// complete a character (or that a stop string holds back) releases no text, so it and the tokens
/// released with it share an offset; offsets never decrease and always index into the final text. (vLLM
/// sums the lengths of the tokens' own strings, which for split characters — each "�" — runs past the
/// text; for whole-character tokens the two agree.)
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOffsets {
    chars: usize,
}

impl TextOffsets {
    /// Offsets of `tokens` tokens released together with `text`; advances past `text`.
    pub fn take(&mut self, tokens: usize, text: &str) -> Vec<usize> {
        let at = self.chars;
        self.chars += text.chars().count();
        vec![at; tokens]
    }
}

/// One choice of a chat answer, collected.
#[derive(Default)]
struct ChatAcc {
    content: String,
    tokens: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
}

/// `/v1/chat/completions`.
pub struct ChatOutput {
    common: Common,
    choices: Vec<ChatAcc>,
}

impl ChatOutput {
    pub fn new(common: Common, choices: usize) -> Self {
        Self {
            common,
            choices: (0..choices).map(|_| ChatAcc::default()).collect(),
        }
    }

    fn chunk(&self, choice: ChunkChoice) -> String {
        to_json(&ChatChunk {
            envelope: self.common.envelope("chat.completion.chunk"),
            choices: vec![choice],
            usage: self.common.chunk_usage(),
        })
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
        let logprobs = self.common.logprobs;
        if !self.common.stream {
            if let Some(a) = self.choices.get_mut(choice) {
                a.content.push_str(&text);
                if logprobs {
                    a.tokens.extend(tokens);
                }
            }
            return;
        }
        let with_logprobs = logprobs && !tokens.is_empty();
        if text.is_empty() && !with_logprobs {
            return;
        }
        let lp = with_logprobs.then(|| self.common.chat_logprobs(&tokens));
        out.push(self.chunk(ChunkChoice {
            index: choice,
            delta: Delta {
                content: Some(text),
                ..Default::default()
            },
            logprobs: lp,
            finish_reason: None,
        }));
    }

    fn finish(&mut self, choice: usize, reason: FinishReason, text: String, out: &mut Chunks) {
        if !self.common.stream {
            if let Some(a) = self.choices.get_mut(choice) {
                a.content.push_str(&text);
                a.finish = Some(reason);
            }
            return;
        }
        if !text.is_empty() {
            self.delta(choice, text, Vec::new(), out);
        }
        out.push(self.chunk(ChunkChoice {
            index: choice,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(finish_str(reason)),
        }));
    }

    fn usage_chunk(&self, usage: Usage) -> String {
        to_json(&ChatChunk {
            envelope: self.common.envelope("chat.completion.chunk"),
            choices: Vec::new(),
            usage: Some(Some(usage)),
        })
    }

    fn body(&mut self, usage: Usage) -> String {
        let common = &self.common;
        let choices = std::mem::take(&mut self.choices)
            .into_iter()
            .enumerate()
            .map(|(index, a)| ChatChoice {
                index,
                logprobs: common.logprobs.then(|| common.chat_logprobs(&a.tokens)),
                message: super::response::AssistantMessage {
                    role: "assistant",
                    content: Some(a.content),
                    ..Default::default()
                },
                finish_reason: a.finish.map(finish_str),
            })
            .collect();
        to_json(&ChatCompletion {
            envelope: common.envelope("chat.completion"),
            choices,
            usage,
        })
    }
}

/// One choice of a completion, collected.
#[derive(Default)]
struct CompletionAcc {
    text: String,
    logprobs: CompletionLogprobs,
    offsets: TextOffsets,
    finish: Option<FinishReason>,
}

/// `/v1/completions`.
pub struct CompletionOutput {
    common: Common,
    choices: Vec<CompletionAcc>,
}

impl CompletionOutput {
    pub fn new(common: Common, choices: usize) -> Self {
        Self {
            common,
            choices: (0..choices).map(|_| CompletionAcc::default()).collect(),
        }
    }

    fn chunk(&self, choice: CompletionChoice) -> String {
        to_json(&Completion {
            envelope: self.common.envelope("text_completion"),
            choices: vec![choice],
            usage: self.common.chunk_usage(),
        })
    }
}

impl Output for CompletionOutput {
    fn delta(&mut self, choice: usize, text: String, tokens: Vec<TokenLogprob>, out: &mut Chunks) {
        let Some(a) = self.choices.get_mut(choice) else {
            return;
        };
        // Logprobs carry text offsets: every delta's text moves them on, whether or not it carries
        // tokens. Nothing to count otherwise (this runs once per token).
        let lp = if self.common.logprobs {
            let offsets = a.offsets.take(tokens.len(), &text);
            Some(self.common.completion_logprobs(&tokens, &offsets))
        } else {
            None
        };
        if !self.common.stream {
            a.text.push_str(&text);
            if let Some(lp) = lp {
                a.logprobs.extend(lp);
            }
            return;
        }
        if text.is_empty() && (tokens.is_empty() || lp.is_none()) {
            return;
        }
        out.push(self.chunk(CompletionChoice {
            index: choice,
            text,
            logprobs: lp,
            finish_reason: None,
        }));
    }

    fn finish(&mut self, choice: usize, reason: FinishReason, text: String, out: &mut Chunks) {
        if !text.is_empty() {
            self.delta(choice, text, Vec::new(), out);
        }
        if !self.common.stream {
            if let Some(a) = self.choices.get_mut(choice) {
                a.finish = Some(reason);
            }
            return;
        }
        out.push(self.chunk(CompletionChoice {
            index: choice,
            text: String::new(),
            logprobs: None,
            finish_reason: Some(finish_str(reason)),
        }));
    }

    fn usage_chunk(&self, usage: Usage) -> String {
        to_json(&Completion {
            envelope: self.common.envelope("text_completion"),
            choices: Vec::new(),
            usage: Some(Some(usage)),
        })
    }

    fn body(&mut self, usage: Usage) -> String {
        let logprobs = self.common.logprobs;
        let choices = std::mem::take(&mut self.choices)
            .into_iter()
            .enumerate()
            .map(|(index, a)| CompletionChoice {
                index,
                text: a.text,
                logprobs: logprobs.then_some(a.logprobs),
                finish_reason: a.finish.map(finish_str),
            })
            .collect();
        to_json(&Completion {
            envelope: self.common.envelope("text_completion"),
            choices,
            usage: Some(Some(usage)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_offsets_count_characters_of_released_text() {
        let mut o = TextOffsets::default();
        // Two byte-fallback tokens release nothing, then a third completes "é" with "x": all share 0.
        assert_eq!(o.take(1, ""), [0]);
        assert_eq!(o.take(1, ""), [0]);
        assert_eq!(o.take(1, "éx"), [0]);
        // Offsets are in characters ("éx" is 3 bytes, 2 characters); tokens released together share one.
        assert_eq!(o.take(2, " ab"), [2, 2]);
        assert_eq!(o.take(1, "c"), [5]);
    }
}
