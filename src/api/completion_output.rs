//! `/v1/completions` answers: text deltas per choice with legacy logprobs (text offsets), and with
//! `echo` the prompt's text and its tokens' logprobs first; vLLM's `prompt_logprobs` per choice.

use super::output::{finish_str, to_json, Chunks, Common, Output, PromptSide, TextOffsets};
use super::response::{
    Completion, CompletionChoice, CompletionLogprobs, PromptLogprobs, TopMap, Usage,
};
use crate::engine::{FinishReason, TokenLogprob};

/// One choice of a completion, collected.
struct CompletionAcc {
    text: String,
    logprobs: CompletionLogprobs,
    offsets: TextOffsets,
    finish: Option<FinishReason>,
}

/// `/v1/completions`.
pub(crate) struct CompletionOutput {
    common: Common,
    choices: Vec<CompletionAcc>,
    prompts: Vec<PromptSide>,
}

impl CompletionOutput {
    /// `prompts[p]` is prompt `p`'s side; its choices are `p·n .. p·n + n`.
    pub(crate) fn new(common: Common, prompts: Vec<PromptSide>) -> Self {
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
                logprobs: legacy.clone(),
                finish_reason: None,
                prompt_logprobs: ranked.clone(),
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
                        let mut all = legacy.clone();
                        all.extend(lps);
                        lps = all;
                    }
                    ranked = r.clone();
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
