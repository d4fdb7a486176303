//! The small types where the HTTP side and the engine meet: a request (token ids + parameters + a channel
//! for events) and the events streamed back. Content-bearing fields print their length, never their text.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use super::constraint::TokenConstraint;
use super::sampler::SamplingParams;
use super::stop::StopStrings;
use crate::kv::prefix_cache::PrefixKey;

/// Why a choice stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    /// The request was cancelled (client gone) or the server is shutting down.
    Abort,
}

/// Per-request generation parameters.
#[derive(Clone)]
pub struct RequestParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings, compiled on the HTTP side (request content: never logged).
    pub stop: Arc<StopStrings>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Number of choices; they share the prompt's KV blocks.
    pub n: usize,
    /// Return the chosen token's log-probability (and `top_logprobs` alternatives).
    pub logprobs: bool,
    pub top_logprobs: usize,
    /// Return every prompt token's log-probability under the model (from the second token on) with this
    /// many alternatives ([`EngineEvent::PromptLogprobs`]).
    pub prompt_logprobs: Option<usize>,
    /// Special tokens give no text (default); `false` keeps them (markers a parser reads).
    pub skip_special_tokens: bool,
}

impl Default for RequestParams {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            sampling: SamplingParams::default(),
            stop: Arc::default(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            n: 1,
            logprobs: false,
            top_logprobs: 0,
            prompt_logprobs: None,
            skip_special_tokens: true,
        }
    }
}

impl std::fmt::Debug for RequestParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestParams")
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.sampling.temperature)
            .field("stop_count", &self.stop.len())
            .field("n", &self.n)
            .field("logprobs", &self.logprobs)
            .finish_non_exhaustive()
    }
}

/// A request handed to the engine.
pub struct EngineRequest {
    pub id: u64,
    pub prompt: Vec<u32>,
    pub params: Arc<RequestParams>,
    pub events: UnboundedSender<EngineEvent>,
    /// Restricts which tokens may be sampled (structured outputs); each choice gets its own copy.
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// The prompt's place in the prefix cache (its tenant's chain); `None`: not cached.
    pub prefix: Option<Arc<PrefixKey>>,
}

impl std::fmt::Debug for EngineRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineRequest")
            .field("id", &self.id)
            .field("prompt_tokens", &self.prompt.len())
            .field("params", &self.params)
            .field("constrained", &self.constraint.is_some())
            .finish()
    }
}

/// A generated token with its raw log-probability and the most likely alternatives.
#[derive(Clone)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What the engine sends back for a request.
pub enum EngineEvent {
    /// New text of one choice (may be empty when text is held back) and the tokens that produced it.
    Delta {
        choice: usize,
        text: String,
        tokens: Vec<TokenLogprob>,
    },
    /// A choice finished; `text` is the last piece of its output.
    Finished {
        choice: usize,
        reason: FinishReason,
        text: String,
        completion_tokens: usize,
        /// Prompt tokens served from the prefix cache (the request's first choice).
        cached_tokens: usize,
    },
    /// Log-probabilities of prompt tokens `from..from + tokens.len()` (position 0 has none), sent while
    /// the prompt is computed, before any Delta; `ranks[i]` is token i's rank (1 = most likely).
    PromptLogprobs {
        from: usize,
        tokens: Vec<TokenLogprob>,
        ranks: Vec<u32>,
    },
    /// The request failed inside the engine (the message holds no content).
    Failed { message: String },
}

impl std::fmt::Debug for EngineEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineEvent::Delta {
                choice,
                text,
                tokens,
            } => f
                .debug_struct("Delta")
                .field("choice", choice)
                .field("text_len", &text.len())
                .field("tokens", &tokens.len())
                .finish(),
            EngineEvent::Finished {
                choice,
                reason,
                completion_tokens,
                ..
            } => f
                .debug_struct("Finished")
                .field("choice", choice)
                .field("reason", reason)
                .field("completion_tokens", completion_tokens)
                .finish(),
            EngineEvent::PromptLogprobs { from, tokens, .. } => f
                .debug_struct("PromptLogprobs")
                .field("from", from)
                .field("tokens", &tokens.len())
                .finish(),
            EngineEvent::Failed { message } => {
                f.debug_struct("Failed").field("message", message).finish()
            }
        }
    }
}
