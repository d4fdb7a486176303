//! The output processor: each sequence's incremental detokenizer, stop matcher and the channel to its
//! client. A sampled token becomes text (or ends the choice: end of generation, a stop token or string,
//! `max_tokens`, a complete constraint) and an event; a finished choice gets its last event.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::detokenize::IncrementalDecoder;
use super::request::{EngineEvent, FinishReason, TokenLogprob};
use super::runner::{PromptLogprobs, Sampled};
use super::sequence::{SeqId, Sequence};
use super::stop::{StopMatcher, StopOutcome};
use crate::loader::LoadedModel;

/// One choice's output state.
struct SeqOutput {
    events: UnboundedSender<EngineEvent>,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
}

/// What a sampled token did to its choice.
pub(crate) enum Advance {
    Continue,
    /// The choice ends; `text` is its last piece.
    Finish(FinishReason, String),
    /// The client is gone.
    ClientGone,
}

pub(crate) struct OutputProcessor {
    loaded: Arc<LoadedModel>,
    outputs: HashMap<SeqId, SeqOutput>,
}

impl OutputProcessor {
    pub(crate) fn new(loaded: Arc<LoadedModel>) -> Self {
        Self {
            loaded,
            outputs: HashMap::new(),
        }
    }

    /// A new choice (`seq`) talking to `events`.
    pub(crate) fn add(&mut self, seq: &Sequence, events: UnboundedSender<EngineEvent>) {
        let p = &seq.params;
        self.outputs.insert(
            seq.id,
            SeqOutput {
                events,
                decoder: IncrementalDecoder::new(p.skip_special_tokens),
                stop: StopMatcher::new(p.stop.clone()),
            },
        );
    }

    /// A forked choice: the same channel, its own detokenizer and stop matcher.
    pub(crate) fn fork(&mut self, parent: SeqId, child: &Sequence) {
        if let Some(events) = self.outputs.get(&parent).map(|o| o.events.clone()) {
            self.add(child, events);
        }
    }

    /// Tells the client of an internal failure (the message holds no content).
    pub(crate) fn fail(&self, id: SeqId, message: &str) {
        if let Some(o) = self.outputs.get(&id) {
            let _ = o.events.send(EngineEvent::Failed {
                message: message.to_owned(),
            });
        }
    }

    pub(crate) fn prompt_logprobs(&self, p: PromptLogprobs) {
        if let Some(o) = self.outputs.get(&p.id) {
            let _ = o.events.send(EngineEvent::PromptLogprobs {
                from: p.from,
                tokens: p.tokens,
                ranks: p.ranks,
            });
        }
    }

    /// `sampled` was appended to `seq`'s tokens: its text, or the end of the choice.
    pub(crate) fn advance(&mut self, seq: &Sequence, sampled: Sampled) -> Advance {
        let Some(o) = self.outputs.get_mut(&seq.id) else {
            return Advance::ClientGone;
        };
        let tok = &self.loaded.tokenizer;
        let p = &seq.params;
        let token = sampled.token;
        let info: Vec<TokenLogprob> = sampled.logprob.into_iter().collect();
        let is_eos = !p.ignore_eos && self.loaded.generation.eos_token_ids.contains(&token);
        let mut finish: Option<FinishReason> = None;
        let mut text = String::new();
        if is_eos || p.stop_token_ids.contains(&token) {
            finish = Some(FinishReason::Stop);
        } else {
            let delta = o.decoder.push(tok, token).unwrap_or_default();
            match o.stop.push(&delta) {
                StopOutcome::Continue(t) => text = t,
                StopOutcome::Stopped(t) => {
                    text = t;
                    finish = Some(FinishReason::Stop);
                }
            }
        }
        if finish.is_none() && (sampled.constraint_done || seq.generated() >= p.max_tokens) {
            // A complete constraint ends the choice as its end of generation would.
            finish = Some(if sampled.constraint_done {
                FinishReason::Stop
            } else {
                FinishReason::Length
            });
            let tail = o.decoder.flush(tok).unwrap_or_default();
            let (StopOutcome::Continue(t) | StopOutcome::Stopped(t)) = o.stop.push(&tail);
            text.push_str(&t);
            text.push_str(&o.stop.flush());
        }
        match finish {
            None => {
                let delta = EngineEvent::Delta {
                    choice: seq.choice,
                    text,
                    tokens: info,
                };
                if o.events.send(delta).is_err() {
                    return Advance::ClientGone;
                }
                Advance::Continue
            }
            Some(reason) => {
                let _ = o.events.send(EngineEvent::Delta {
                    choice: seq.choice,
                    text: String::new(),
                    tokens: info,
                });
                Advance::Finish(reason, text)
            }
        }
    }

    /// `seq` left the engine: its last event (and that of choices never forked from it).
    pub(crate) fn finished(&mut self, seq: &Sequence, reason: FinishReason, text: String) {
        let Some(o) = self.outputs.remove(&seq.id) else {
            return;
        };
        let _ = o.events.send(EngineEvent::Finished {
            choice: seq.choice,
            reason,
            text,
            completion_tokens: seq.generated(),
            cached_tokens: seq.prefix_hit,
        });
        // Choices never forked (cancelled before prefill ended) finish too.
        for k in 0..seq.pending_forks {
            let _ = o.events.send(EngineEvent::Finished {
                choice: seq.choice + 1 + k,
                reason,
                text: String::new(),
                completion_tokens: 0,
                cached_tokens: 0,
            });
        }
    }
}
