//! One formatter per kind of answer: engine events of each choice (text deltas with their tokens, finish)
//! become OpenAI's wire shapes ([`super::response`]) — stream chunks as they come, or one response body
//! when collected. Chat formatting also splits reasoning and tool calls out of the text
//! ([`super::chat_output`]); completions add text offsets (and, with `echo`, the prompt).

use super::response::{
    ChatChoice, ChatChunk, ChatCompletion, ChatLogprobs, ChatTokenLogprob, ChunkChoice, Completion,
    CompletionChoice, CompletionLogprobs, Delta, Envelope, PromptLogprobs, PromptTokenLogprobs,
    RankedLogprob, TopLogprob, TopMap, Usage,
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
    /// Choices per prompt.
    pub n: usize,
    /// vLLM's `prompt_logprobs` field was asked for.
    pub prompt_logprobs: bool,
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

impl Common {
    /// vLLM's `prompt_logprobs` of a prompt whose positions 1.. have `tokens` (position 0: `null`).
    fn ranked(&self, tokens: &[TokenLogprob], ranks: &[u32]) -> PromptLogprobs {
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
pub struct PromptEcho {
    pub text: String,
    pub tokens: Vec<String>,
    pub offsets: Vec<usize>,
}

/// What one prompt's own tokens bring to its choices: the echo, and the logprobs of its tokens as they
/// arrive.
pub struct PromptSide {
    pub echo: Option<PromptEcho>,
    /// Positions with a logprob: every prompt token but the first.
    pub expected: usize,
    logprobs: Vec<TokenLogprob>,
    ranks: Vec<u32>,
}

impl PromptSide {
    pub fn new(echo: Option<PromptEcho>, prompt_len: usize) -> Self {
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
pub struct TextOffsets {
    chars: usize,
}

impl TextOffsets {
    /// Offsets that start after `chars` characters (an echoed prompt).
    pub fn starting_at(chars: usize) -> Self {
        Self { chars }
    }

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
    /// vLLM's `prompt_logprobs` (collected answers only).
    prompt: PromptSide,
}

impl ChatOutput {
    pub fn new(common: Common, choices: usize, prompt_len: usize) -> Self {
        Self {
            common,
            choices: (0..choices).map(|_| ChatAcc::default()).collect(),
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

/// One choice of a completion, collected.
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
    prompts: Vec<PromptSide>,
}

impl CompletionOutput {
    /// `prompts[p]` is prompt `p`'s side; its choices are `p·n .. p·n + n`.
    pub fn new(common: Common, prompts: Vec<PromptSide>) -> Self {
        let choices = prompts
            .iter()
            .flat_map(|p| {
                let chars = p.echo.as_ref().map_or(0, |e| e.text.chars().count());
                (0..common.n).map(move |_| CompletionAcc {
                    text: String::new(),
                    logprobs: CompletionLogprobs::default(),
                    offsets: TextOffsets::starting_at(chars),
                    finish: None,
                })
            })
            .collect();
        Self {
            common,
            choices,
            prompts,
        }
    }

    fn chunk(&self, choice: CompletionChoice) -> String {
        to_json(&Completion {
            envelope: self.common.envelope("text_completion"),
            choices: vec![choice],
            usage: self.common.chunk_usage(),
        })
    }

    /// Prompt `p` has something to show before its choices' text (echo or vLLM's prompt logprobs).
    fn shows_prompt(&self, p: usize) -> bool {
        self.common.prompt_logprobs || self.prompts.get(p).is_some_and(|s| s.echo.is_some())
    }

    /// All of prompt `p`'s logprobs are in (or none were asked for).
    fn prompt_complete(&self, p: usize) -> bool {
        let wanted = self.common.prompt_logprobs || self.common.logprobs;
        self.prompts
            .get(p)
            .is_some_and(|s| !wanted || s.logprobs.len() >= s.expected)
    }

    /// What prompt `p` puts before its choices: the echoed text, its tokens' legacy logprobs (echo with
    /// `logprobs`), and vLLM's `prompt_logprobs` when asked for.
    fn prompt_part(
        &self,
        p: usize,
    ) -> (String, Option<CompletionLogprobs>, Option<PromptLogprobs>) {
        let Some(side) = self.prompts.get(p) else {
            return (String::new(), None, None);
        };
        let c = &self.common;
        let legacy = match (&side.echo, c.logprobs) {
            (Some(echo), true) => {
                let alternatives = side.logprobs.iter().map(|t| {
                    Some(TopMap(
                        t.top
                            .iter()
                            .map(|&(id, lp)| (c.token_str(id), lp))
                            .collect(),
                    ))
                });
                Some(CompletionLogprobs {
                    tokens: echo.tokens.clone(),
                    token_logprobs: std::iter::once(None)
                        .chain(side.logprobs.iter().map(|t| Some(t.logprob)))
                        .collect(),
                    top_logprobs: std::iter::once(None).chain(alternatives).collect(),
                    text_offset: echo.offsets.clone(),
                })
            }
            _ => None,
        };
        let ranked = c
            .prompt_logprobs
            .then(|| c.ranked(&side.logprobs, &side.ranks));
        let text = side
            .echo
            .as_ref()
            .map(|e| e.text.clone())
            .unwrap_or_default();
        (text, legacy, ranked)
    }

    /// Streams prompt `p`'s part to each of its choices.
    fn send_prompt(&self, p: usize, out: &mut Chunks) {
        let (text, legacy, ranked) = self.prompt_part(p);
        for k in 0..self.common.n {
            out.push(self.chunk(CompletionChoice {
                index: p * self.common.n + k,
                text: text.clone(),
                logprobs: legacy.as_ref().map(|l| {
                    CompletionLogprobs {
                        tokens: l.tokens.clone(),
                        token_logprobs: l.token_logprobs.clone(),
                        top_logprobs: l
                            .top_logprobs
                            .iter()
                            .map(|m| m.as_ref().map(|m| TopMap(m.0.clone())))
                            .collect(),
                        text_offset: l.text_offset.clone(),
                    }
                }),
                finish_reason: None,
                prompt_logprobs: ranked.as_ref().map(|r| {
                    r.iter()
                        .map(|e| {
                            e.as_ref().map(|e| {
                                PromptTokenLogprobs(
                                    e.0.iter()
                                        .map(|(id, v)| {
                                            (
                                                *id,
                                                RankedLogprob {
                                                    logprob: v.logprob,
                                                    rank: v.rank,
                                                    decoded_token: v.decoded_token.clone(),
                                                },
                                            )
                                        })
                                        .collect(),
                                )
                            })
                        })
                        .collect()
                }),
            }));
        }
    }
}

impl Output for CompletionOutput {
    fn open(&mut self, out: &mut Chunks) {
        for p in 0..self.prompts.len() {
            if self.shows_prompt(p) && self.prompt_complete(p) {
                self.send_prompt(p, out);
            }
        }
    }

    fn prompt_logprobs(
        &mut self,
        prompt: usize,
        tokens: Vec<TokenLogprob>,
        ranks: Vec<u32>,
        out: &mut Chunks,
    ) {
        let Some(side) = self.prompts.get_mut(prompt) else {
            return;
        };
        let was_complete = side.logprobs.len() >= side.expected;
        side.logprobs.extend(tokens);
        side.ranks.extend(ranks);
        if self.common.stream
            && !was_complete
            && self.prompt_complete(prompt)
            && self.shows_prompt(prompt)
        {
            self.send_prompt(prompt, out);
        }
    }

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
            prompt_logprobs: None,
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
            prompt_logprobs: None,
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
        let n = self.common.n.max(1);
        let parts: Vec<_> = (0..self.prompts.len())
            .map(|p| self.prompt_part(p))
            .collect();
        let choices = std::mem::take(&mut self.choices)
            .into_iter()
            .enumerate()
            .map(|(index, a)| {
                let (mut text, mut lps, mut ranked) = (a.text, a.logprobs, None);
                if let Some((echo, legacy, r)) = parts.get(index / n) {
                    text.insert_str(0, echo);
                    if let Some(legacy) = legacy {
                        let mut all = clone_logprobs(legacy);
                        all.extend(lps);
                        lps = all;
                    }
                    ranked = r.as_ref().map(clone_ranked);
                }
                CompletionChoice {
                    index,
                    text,
                    logprobs: logprobs.then_some(lps),
                    finish_reason: a.finish.map(finish_str),
                    prompt_logprobs: ranked,
                }
            })
            .collect();
        to_json(&Completion {
            envelope: self.common.envelope("text_completion"),
            choices,
            usage: Some(Some(usage)),
        })
    }
}

fn clone_logprobs(l: &CompletionLogprobs) -> CompletionLogprobs {
    CompletionLogprobs {
        tokens: l.tokens.clone(),
        token_logprobs: l.token_logprobs.clone(),
        top_logprobs: l
            .top_logprobs
            .iter()
            .map(|m| m.as_ref().map(|m| TopMap(m.0.clone())))
            .collect(),
        text_offset: l.text_offset.clone(),
    }
}

fn clone_ranked(r: &PromptLogprobs) -> PromptLogprobs {
    r.iter()
        .map(|e| {
            e.as_ref().map(|e| {
                PromptTokenLogprobs(
                    e.0.iter()
                        .map(|(id, v)| {
                            (
                                *id,
                                RankedLogprob {
                                    logprob: v.logprob,
                                    rank: v.rank,
                                    decoded_token: v.decoded_token.clone(),
                                },
                            )
                        })
                        .collect(),
                )
            })
        })
        .collect()
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
