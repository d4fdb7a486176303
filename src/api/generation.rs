//! Running a validated request through the engine and answering in OpenAI's shapes: collected into one
//! JSON response, or streamed as Server-Sent Events exactly as OpenAI sends them (role first, content
//! deltas, finish_reason, optional usage chunk, `data: [DONE]`). A dropped client cancels its sequences.

use std::convert::Infallible;
use std::time::Instant;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::auth::{ReserveError, TokenReservation};
use super::chat_output::{ChatOutput, ChatParse};
use super::completion_output::CompletionOutput;
use super::error::ApiError;
use super::metrics::Metrics;
use super::output::{Chunks, Common, Output, PromptEcho, PromptSide};
use super::response::Usage;
use super::responses::ResponsesSettings;
use super::responses_output::ResponsesOutput;
use super::AppState;
use std::sync::Arc;

use crate::engine::{EngineEvent, EngineHandle, PrefixKey, RequestParams, TokenConstraint};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
    /// The Responses API (a chat request underneath).
    Responses,
}

pub(crate) struct Job {
    pub kind: Kind,
    pub prompts: Vec<Vec<u32>>,
    pub params: RequestParams,
    pub stream: bool,
    pub include_usage: bool,
    /// When the request arrived (TTFT and end-to-end latency are measured from here).
    pub received: Instant,
    /// The API key id the request was authenticated with, for per-key accounting.
    pub key: Option<String>,
    /// Whether the client set `max_tokens` (otherwise it is the context's room, and a key's token limit
    /// may lower it to what the key can still use).
    pub max_tokens_explicit: bool,
    /// Completions with `echo`: each prompt as echoed (same order as `prompts`).
    pub echo: Vec<PromptEcho>,
    /// vLLM's `prompt_logprobs` field was asked for.
    pub prompt_logprobs: bool,
    /// Chat: how the output is parsed (reasoning, tool calls).
    pub chat: ChatParse,
    /// What the output must follow (one prompt: chat).
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// The Responses API: the settings its answer repeats.
    pub responses: Option<ResponsesSettings>,
    /// Each prompt's place in the prefix cache (empty: caching off).
    pub prefixes: Vec<Option<Arc<PrefixKey>>>,
}

/// Token counts of a streamed request, filled in while it streams (the access log reads them when the
/// response body ends).
#[derive(Debug, Default)]
pub(crate) struct StreamCounts {
    pub completion_tokens: std::sync::atomic::AtomicUsize,
}

/// Marks a streamed response: its access-log line is written when its body ends, with these counts.
#[derive(Debug, Clone)]
pub(crate) struct Streamed(pub std::sync::Arc<StreamCounts>);

/// Latency bookkeeping of one request: TTFT, gaps between a choice's tokens, end-to-end.
struct Timing {
    received: Instant,
    first_token: bool,
    last: Vec<Option<Instant>>,
}

impl Timing {
    fn new(received: Instant, choices: usize) -> Self {
        Self {
            received,
            first_token: false,
            last: vec![None; choices],
        }
    }

    /// One token of `choice` was produced now.
    fn token(&mut self, metrics: &Metrics, choice: usize) {
        let now = Instant::now();
        if !self.first_token {
            self.first_token = true;
            metrics
                .ttft
                .observe(now.duration_since(self.received).as_secs_f64());
        }
        if let Some(slot) = self.last.get_mut(choice) {
            if let Some(prev) = *slot {
                metrics
                    .inter_token
                    .observe(now.duration_since(prev).as_secs_f64());
            }
            *slot = Some(now);
        }
    }
}

/// Reserves the request's tokens against its key's per-minute limit (prompt + max_tokens of every
/// choice). Without an explicit `max_tokens`, generation is capped at what the key can still use.
fn reserve_tokens(state: &AppState, job: &mut Job) -> Result<Option<TokenReservation>, ApiError> {
    let Some(key) = job.key.as_deref() else {
        return Ok(None);
    };
    let prompt: u64 = job.prompts.iter().map(|p| p.len() as u64).sum();
    let choices = (job.prompts.len() * job.params.n) as u64;
    if !job.max_tokens_explicit {
        if let Some(left) = state.keys.tokens_left(key) {
            let affordable = left.saturating_sub(prompt) / choices.max(1);
            job.params.max_tokens = job.params.max_tokens.min(affordable.max(1) as usize);
        }
    }
    let cost = prompt + choices * job.params.max_tokens as u64;
    match state.keys.reserve(key, cost) {
        Ok(r) => Ok(r.map(|mut r| {
            r.used = prompt;
            r
        })),
        Err(ReserveError::Wait(d)) => Err(ApiError::rate_limited(d.as_secs_f64().ceil() as u64)),
        Err(ReserveError::TooLarge { needed, limit }) => {
            Err(ApiError::over_token_limit(needed, limit))
        }
    }
}

/// Cancels the engine requests when dropped before they finished (client went away).
struct InFlight {
    engine: EngineHandle,
    ids: Vec<u64>,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            for &id in &self.ids {
                self.engine.cancel(id);
            }
        }
    }
}

fn random_id(prefix: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    // OpenAI: `chatcmpl-…`, `cmpl-…`, but `resp_…`.
    let sep = if prefix == "resp" { '_' } else { '-' };
    format!("{prefix}{sep}{n:032x}")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Submits every prompt; returns the merged stream of (choice index, event) and the guard.
fn submit(
    state: &AppState,
    job: &mut Job,
) -> Result<
    (
        futures::stream::BoxStream<'static, (usize, EngineEvent)>,
        InFlight,
    ),
    ApiError,
> {
    let n = job.params.n;
    let mut guard = InFlight {
        engine: state.engine.clone(),
        ids: Vec::new(),
        done: false,
    };
    let mut streams = Vec::new();
    // One compiled constraint; each prompt gets its own copy.
    let constraint = job.constraint.take();
    for (p, prompt) in job.prompts.iter().enumerate() {
        let (id, rx) = state.engine.submit_constrained(
            prompt.clone(),
            job.params.clone(),
            constraint.as_ref().map(|c| c.fork()),
            job.prefixes.get(p).cloned().flatten(),
        )?;
        guard.ids.push(id);
        streams.push(
            UnboundedReceiverStream::new(rx)
                .map(move |e| {
                    let choice = match &e {
                        EngineEvent::Delta { choice, .. }
                        | EngineEvent::Finished { choice, .. } => *choice,
                        EngineEvent::PromptLogprobs { .. } | EngineEvent::Failed { .. } => 0,
                    };
                    (p * n + choice, e)
                })
                .boxed(),
        );
    }
    Ok((futures::stream::select_all(streams).boxed(), guard))
}

pub(crate) async fn run(state: AppState, mut job: Job) -> Result<Response, ApiError> {
    let prompt_tokens: usize = job.prompts.iter().map(|p| p.len()).sum();
    let reservation = reserve_tokens(&state, &mut job)?;
    let (events, guard) = submit(&state, &mut job)?;
    let choices = job.prompts.len() * job.params.n;
    let common = Common {
        id: random_id(match job.kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
            Kind::Responses => "resp",
        }),
        created: now(),
        stream: job.stream,
        include_usage: job.include_usage,
        logprobs: job.params.logprobs,
        n: job.params.n,
        prompt_logprobs: job.prompt_logprobs,
        state: state.clone(),
    };
    let output: Box<dyn Output> = match job.kind {
        Kind::Chat => Box::new(ChatOutput::new(
            common,
            choices,
            prompt_tokens,
            std::mem::take(&mut job.chat),
        )),
        Kind::Responses => Box::new(ResponsesOutput::new(
            common,
            job.responses.take().unwrap_or_default(),
            std::mem::take(&mut job.chat),
        )),
        Kind::Completion => {
            let mut echoes = std::mem::take(&mut job.echo).into_iter();
            let sides = job
                .prompts
                .iter()
                .map(|p| PromptSide::new(echoes.next(), p.len()))
                .collect();
            Box::new(CompletionOutput::new(common, sides))
        }
    };
    let run = Running {
        state,
        output,
        events,
        guard,
        n: job.params.n,
        prompt_tokens,
        completion_tokens: 0,
        cached_tokens: (!job.prefixes.is_empty()).then_some(0),
        timing: Timing::new(job.received, choices),
        key: job.key,
        reservation,
    };
    if job.stream {
        Ok(stream(run, job.include_usage))
    } else {
        collect(run).await
    }
}

/// A request between its submission and its last event.
struct Running {
    state: AppState,
    output: Box<dyn Output>,
    events: futures::stream::BoxStream<'static, (usize, EngineEvent)>,
    /// Dropped with the response (or its body): cancels the engine requests unless they all finished.
    guard: InFlight,
    /// Choices per prompt.
    n: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Prompt tokens served from the prefix cache (`None`: caching off).
    cached_tokens: Option<usize>,
    timing: Timing,
    key: Option<String>,
    /// Tokens held against the key's limit; settled to what was used when the request ends or is
    /// dropped.
    reservation: Option<TokenReservation>,
}

impl Running {
    /// Hands one event to the formatter (stream chunks go to `out`); a failure ends the request.
    fn on_event(
        &mut self,
        idx: usize,
        event: EngineEvent,
        out: &mut Chunks,
    ) -> Result<(), ApiError> {
        match event {
            EngineEvent::Delta { text, tokens, .. } => {
                self.timing.token(&self.state.metrics, idx);
                if let Some(r) = &mut self.reservation {
                    r.used += 1;
                }
                self.output.delta(idx, text, tokens, out);
            }
            EngineEvent::Finished {
                reason,
                text,
                completion_tokens,
                cached_tokens,
                ..
            } => {
                self.completion_tokens += completion_tokens;
                if let Some(c) = &mut self.cached_tokens {
                    *c += cached_tokens;
                }
                self.output.finish(idx, reason, text, out);
            }
            EngineEvent::PromptLogprobs { tokens, ranks, .. } => {
                let prompt = idx / self.n.max(1);
                self.output.prompt_logprobs(prompt, tokens, ranks, out);
            }
            EngineEvent::Failed { message } => return Err(ApiError::internal(message)),
        }
        Ok(())
    }

    /// Every choice finished: the request's tokens are counted (globally, per key, its latency).
    fn on_end(&mut self) -> Usage {
        self.guard.done = true;
        let mut usage = Usage::new(self.prompt_tokens, self.completion_tokens);
        if let Some(cached) = self.cached_tokens {
            usage = usage.with_cached(cached);
        }
        self.state
            .metrics
            .e2e
            .observe(self.timing.received.elapsed().as_secs_f64());
        self.state.metrics.record_tokens(
            self.key.as_deref(),
            usage.prompt_tokens as u64,
            usage.completion_tokens as u64,
        );
        usage
    }
}

async fn collect(mut run: Running) -> Result<Response, ApiError> {
    let mut none = Chunks::new();
    while let Some((idx, event)) = run.events.next().await {
        run.on_event(idx, event, &mut none)?;
    }
    let usage = run.on_end();
    let body = run.output.body(usage);
    let mut resp = (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    resp.extensions_mut().insert(usage);
    Ok(resp)
}

/// Streams the request's events as SSE chunks. The chunks are formatted as hyper polls the response body
/// (no task or channel between the engine's events and the socket); dropping the body (client gone)
/// drops the guard, which cancels the request.
fn stream(mut run: Running, include_usage: bool) -> Response {
    let usage_out = Usage::new(run.prompt_tokens, 0);
    let counts = std::sync::Arc::new(StreamCounts::default());
    let mut opening = Chunks::new();
    run.output.open(&mut opening);
    let state = SseState {
        counts: counts.clone(),
        pending: opening.into_iter().map(sse_event).collect(),
        finished: false,
        run,
        include_usage,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), st));
            }
            if st.finished {
                return None;
            }
            match st.run.events.next().await {
                Some((idx, event)) => st.on_event(idx, event),
                None => st.on_end(),
            }
        }
    });
    let mut resp = Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response();
    resp.extensions_mut().insert(usage_out);
    resp.extensions_mut().insert(Streamed(counts));
    resp
}

fn sse_event(json: String) -> Event {
    Event::default().data(sse_safe(json))
}

/// A streamed request between polls of its response body: the SSE events ready to go out.
struct SseState {
    /// Completion tokens so far, for the access log.
    counts: std::sync::Arc<StreamCounts>,
    pending: std::collections::VecDeque<Event>,
    /// Nothing follows the pending events.
    finished: bool,
    run: Running,
    include_usage: bool,
}

impl SseState {
    fn on_event(&mut self, idx: usize, event: EngineEvent) {
        if matches!(event, EngineEvent::Delta { .. }) {
            self.counts
                .completion_tokens
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut out = Chunks::new();
        let result = self.run.on_event(idx, event, &mut out);
        self.pending.extend(out.into_iter().map(sse_event));
        if let Err(e) = result {
            // The error ends the stream; the guard, still armed, cancels whatever is left.
            self.pending.push_back(sse_event(e.body().to_string()));
            self.finished = true;
        }
    }

    /// Every choice finished: the usage chunk (when asked for) and `[DONE]`.
    fn on_end(&mut self) {
        let usage = self.run.on_end();
        let mut out = Chunks::new();
        self.run.output.closing(usage, self.include_usage, &mut out);
        self.pending.extend(out.into_iter().map(sse_event));
        self.finished = true;
    }
}

/// JSON for one SSE `data:` line, with U+0085, U+2028 and U+2029 escaped: JSON allows them raw inside
/// strings, but clients that split the stream with Python's `str.splitlines` (httpx's `iter_lines`) break
/// the line there. They can only occur inside strings, where `\uXXXX` means the same character.
fn sse_safe(json: String) -> String {
    if !json.contains(['\u{85}', '\u{2028}', '\u{2029}']) {
        return json;
    }
    json.replace('\u{85}', "\\u0085")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_separators_are_escaped_for_sse() {
        let v = serde_json::json!({"text": "a\u{2028}b\u{2029}c\u{85}d"});
        let out = sse_safe(v.to_string());
        assert!(!out.contains(['\u{85}', '\u{2028}', '\u{2029}']));
        assert_eq!(out.lines().count(), 1);
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, v, "the same string after parsing");
        assert_eq!(sse_safe("{}".into()), "{}");
    }
}
