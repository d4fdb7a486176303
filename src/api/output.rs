//! One formatter per kind of answer: engine events of each choice (text deltas with their tokens, finish)
//! become OpenAI's wire shapes ([`super::response`]) — stream chunks as they come, or one response body
//! when collected. Chat formatting also splits reasoning and tool calls out of the text
//! ([`super::chat_output`]); completions add text offsets (and, with `echo`, the prompt).

use super::response::{
    ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, Envelope, PromptLogprobs,
    PromptTokenLogprobs, RankedLogprob, TopLogprob, TopMap, Usage,
};
use super::AppState;
use crate::engine::{FinishReason, TokenLogprob};

/// What a formatter emits while streaming: serialized JSON chunks, in order.
pub(crate) type Chunks = Vec<String>;

/// Turns one request's engine events into OpenAI's shapes. `stream` chunks go to `out`; otherwise the
/// formatter accumulates and [`Output::body`] gives the whole response.
pub(crate) trait Output: Send {
    /// Chunks that open a stream (chat: the assistant role of every choice).
    fn open(&mut self, _out: &mut Chunks) {}
    /// New text of `choice` and the tokens that produced it.
    fn delta(&mut self, choice: usize, text: String, tokens: Vec<TokenLogprob>, out: &mut Chunks);
    /// Logprobs of the next prompt tokens of prompt `prompt` (they arrive in order, before its choices'
    /// first delta).
    fn prompt_logprobs(
        &mut self,
        prompt: usize,
        tokens: Vec<TokenLogprob>,
        ranks: Vec<u32>,
        out: &mut Chunks,
    );
    /// `choice` ended with `text` as its last piece.
    fn finish(&mut self, choice: usize, reason: FinishReason, text: String, out: &mut Chunks);
    /// The closing usage chunk of a stream.
    fn usage_chunk(&self, usage: Usage) -> String;
    /// What closes a stream: the usage chunk when asked for (Chat Completions, Completions), then
    /// `[DONE]`; the Responses API overrides this with its own closing event and no `[DONE]`.
    fn closing(&mut self, usage: Usage, include_usage: bool, out: &mut Chunks) {
        if include_usage {
            out.push(self.usage_chunk(usage));
        }
        out.push("[DONE]".into());
    }
    /// The collected response.
    fn body(&mut self, usage: Usage) -> String;
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Our response types hold only strings, numbers and lists: serializing them cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

/// What both formatters share: the envelope's fields and token-text lookups.
pub(crate) struct Common {
    pub state: AppState,
    pub id: String,
    pub created: u64,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
    /// Choices per prompt.
    pub n: usize,
    /// vLLM's `prompt_logprobs` field was asked for.
    pub prompt_logprobs: bool,
}

impl Common {
    pub(crate) fn envelope(&self, object: &'static str) -> Envelope<'_> {
        Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.state.model_name,
            system_fingerprint: None,
        }
    }

    /// `usage` of an ordinary chunk: `null` when the client asked for usage (it comes last), else absent.
    pub(crate) fn chunk_usage(&self) -> Option<Option<Usage>> {
        self.include_usage.then_some(None)
    }

    pub(crate) fn token_str(&self, id: u32) -> String {
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

    pub(crate) fn chat_logprobs(&self, tokens: &[TokenLogprob]) -> ChatLogprobs {
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
    pub(crate) fn completion_logprobs(
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

impl Common {
    /// vLLM's `prompt_logprobs` of a prompt whose positions 1.. have `tokens` (position 0: `null`).
    pub(crate) fn ranked(&self, tokens: &[TokenLogprob], ranks: &[u32]) -> PromptLogprobs {
        let entries = tokens.iter().zip(ranks).map(|(t, &rank)| {
            let own = (
                t.token,
                RankedLogprob {
                    logprob: t.logprob,
                    rank,
                    decoded_token: self.token_str(t.token),
                },
            );
            let top = t.top.iter().enumerate().map(|(i, &(id, logprob))| {
                (
                    id,
                    RankedLogprob {
                        logprob,
                        rank: i as u32 + 1,
                        decoded_token: self.token_str(id),
                    },
                )
            });
            Some(PromptTokenLogprobs(
                std::iter::once(own).chain(top).collect(),
            ))
        });
        std::iter::once(None).chain(entries).collect()
    }
}

/// A prompt as `echo` returns it: its text, each token's text, and where each token starts in the text
/// (characters, as [`TextOffsets`]). Built on the blocking pool with the prompt's tokenization.
pub(crate) struct PromptEcho {
    pub text: String,
    pub tokens: Vec<String>,
    pub offsets: Vec<usize>,
}

/// What one prompt's own tokens bring to its choices: the echo, and the logprobs of its tokens as they
/// arrive.
pub(crate) struct PromptSide {
    pub echo: Option<PromptEcho>,
    /// Positions with a logprob: every prompt token but the first.
    pub expected: usize,
    pub(crate) logprobs: Vec<TokenLogprob>,
    pub(crate) ranks: Vec<u32>,
}

impl PromptSide {
    pub(crate) fn new(echo: Option<PromptEcho>, prompt_len: usize) -> Self {
        Self {
            echo,
            expected: prompt_len.saturating_sub(1),
            logprobs: Vec::new(),
            ranks: Vec::new(),
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
pub(crate) struct TextOffsets {
    chars: usize,
}

impl TextOffsets {
    /// Offsets that start after `chars` characters (an echoed prompt).
    pub(crate) fn starting_at(chars: usize) -> Self {
        Self { chars }
    }

    /// Offsets of `tokens` tokens released together with `text`; advances past `text`.
    pub(crate) fn take(&mut self, tokens: usize, text: &str) -> Vec<usize> {
        let at = self.chars;
        self.chars += text.chars().count();
        vec![at; tokens]
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
