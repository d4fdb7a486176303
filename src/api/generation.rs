//! Running a validated request through the engine and answering in OpenAI's shapes: collected into one
//! JSON response, or streamed as Server-Sent Events exactly as OpenAI sends them (role first, content
//! deltas, finish_reason, optional usage chunk, `data: [DONE]`). A dropped client cancels its sequences.

use std::convert::Infallible;
use std::time::Instant;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::auth::{ReserveError, TokenReservation};
use super::error::ApiError;
use super::metrics::Metrics;
use super::AppState;
use crate::engine::{EngineEvent, EngineHandle, FinishReason, RequestParams, TokenLogprob};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// Token counts of an answered request, for the access log (counts only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

pub struct Job {
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
}

/// Token counts of a streamed request, filled in while it streams (the access log reads them when the
/// response body ends).
#[derive(Debug, Default)]
pub struct StreamCounts {
    pub completion_tokens: std::sync::atomic::AtomicUsize,
}

/// Marks a streamed response: its access-log line is written when its body ends, with these counts.
#[derive(Debug, Clone)]
pub struct Streamed(pub std::sync::Arc<StreamCounts>);

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

/// Counts the tokens of a completed request (globally, per key, and against the key's token limit).
fn account(state: &AppState, key: Option<&str>, timing: &Timing, usage: Usage) {
    state
        .metrics
        .e2e
        .observe(timing.received.elapsed().as_secs_f64());
    state.metrics.record_tokens(
        key,
        usage.prompt_tokens as u64,
        usage.completion_tokens as u64,
    );
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

/// Where each token's text starts in a choice's text, as OpenAI's `text_offset` (in characters, as Python
/// indexes the string): the length of the text released before the token. A token whose bytes do not yet
/// complete a character (or that a stop string holds back) releases no text, so it and the tokens
/// released with it share an offset; offsets never decrease and always index into the final text. (vLLM
/// sums the lengths of the tokens' own strings, which for split characters — each "�" — runs past the
/// text; for whole-character tokens the two agree.)
#[derive(Debug, Clone, Copy, Default)]
struct TextOffsets {
    chars: usize,
}

impl TextOffsets {
    /// Offsets of `tokens` tokens released together with `text`; advances past `text`.
    fn take(&mut self, tokens: usize, text: &str) -> Vec<usize> {
        let at = self.chars;
        self.chars += text.chars().count();
        vec![at; tokens]
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

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

fn random_id(prefix: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{prefix}-{n:032x}")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Logprob formatting needs token strings.
struct Formatter {
    state: AppState,
    kind: Kind,
    id: String,
    created: u64,
}

impl Formatter {
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

    fn chat_logprobs(&self, tokens: &[TokenLogprob]) -> Value {
        let content: Vec<Value> = tokens
            .iter()
            .map(|t| {
                let s = self.token_str(t.token);
                let top: Vec<Value> = t
                    .top
                    .iter()
                    .map(|(id, lp)| {
                        let s = self.token_str(*id);
                        json!({"token": s, "logprob": lp, "bytes": self.token_bytes(*id)})
                    })
                    .collect();
                json!({"token": s, "logprob": t.logprob, "bytes": self.token_bytes(t.token),
                    "top_logprobs": top})
            })
            .collect();
        json!({ "content": content })
    }

    /// Legacy completions' logprobs; `offsets[i]` is token `i`'s `text_offset`.
    fn completion_logprobs(&self, tokens: &[TokenLogprob], offsets: &[usize]) -> Value {
        let mut strs = Vec::new();
        let mut lps = Vec::new();
        let mut tops = Vec::new();
        for t in tokens {
            let s = self.token_str(t.token);
            strs.push(s);
            lps.push(t.logprob);
            let top: serde_json::Map<String, Value> = t
                .top
                .iter()
                .map(|(id, lp)| (self.token_str(*id), json!(lp)))
                .collect();
            tops.push(Value::Object(top));
        }
        json!({"tokens": strs, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
    }

    fn model(&self) -> &str {
        &self.state.model_name
    }

    fn chunk(&self, choices: Vec<Value>, include_usage: bool) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model(),
            "system_fingerprint": null, "choices": choices});
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    }
}

fn usage_json(u: Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens})
}

/// Submits every prompt; returns the merged stream of (choice index, event) and the guard.
fn submit(
    state: &AppState,
    job: &Job,
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
    for (p, prompt) in job.prompts.iter().enumerate() {
        let (id, rx) = state.engine.submit(prompt.clone(), job.params.clone())?;
        guard.ids.push(id);
        streams.push(
            UnboundedReceiverStream::new(rx)
                .map(move |e| {
                    let choice = match &e {
                        EngineEvent::Delta { choice, .. }
                        | EngineEvent::Finished { choice, .. } => *choice,
                        EngineEvent::Failed { .. } => 0,
                    };
                    (p * n + choice, e)
                })
                .boxed(),
        );
    }
    Ok((futures::stream::select_all(streams).boxed(), guard))
}

pub async fn run(state: AppState, mut job: Job) -> Result<Response, ApiError> {
    let prompt_tokens: usize = job.prompts.iter().map(|p| p.len()).sum();
    let reservation = reserve_tokens(&state, &mut job)?;
    let (events, guard) = submit(&state, &job)?;
    let fmt = Formatter {
        id: random_id(match job.kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }),
        created: now(),
        kind: job.kind,
        state,
    };
    let choices = job.prompts.len() * job.params.n;
    let ctx = RunContext {
        choices,
        prompt_tokens,
        logprobs: job.params.logprobs,
        timing: Timing::new(job.received, choices),
        key: job.key,
        reservation,
    };
    if job.stream {
        Ok(stream(fmt, events, guard, ctx, job.include_usage))
    } else {
        collect(fmt, events, guard, ctx).await
    }
}

/// What both answer modes need besides the events.
struct RunContext {
    choices: usize,
    prompt_tokens: usize,
    logprobs: bool,
    timing: Timing,
    key: Option<String>,
    /// Tokens held against the key's limit; settled to what was used when the request ends or is
    /// dropped.
    reservation: Option<TokenReservation>,
}

impl RunContext {
    /// One more generated token (every Delta event is one).
    fn generated(&mut self) {
        if let Some(r) = &mut self.reservation {
            r.used += 1;
        }
    }
}

#[derive(Default)]
struct ChoiceAcc {
    text: String,
    tokens: Vec<TokenLogprob>,
    /// Each token's `text_offset` (see [`TextOffsets`]).
    offsets: Vec<usize>,
    text_offsets: TextOffsets,
    finish: Option<FinishReason>,
    completion_tokens: usize,
}

async fn collect(
    fmt: Formatter,
    mut events: futures::stream::BoxStream<'static, (usize, EngineEvent)>,
    mut guard: InFlight,
    mut ctx: RunContext,
) -> Result<Response, ApiError> {
    let (choices, prompt_tokens, logprobs) = (ctx.choices, ctx.prompt_tokens, ctx.logprobs);
    // Only completions' logprobs carry text offsets.
    let offsets_wanted = logprobs && fmt.kind == Kind::Completion;
    let mut acc: Vec<ChoiceAcc> = (0..choices).map(|_| ChoiceAcc::default()).collect();
    while let Some((idx, event)) = events.next().await {
        let Some(a) = acc.get_mut(idx) else { continue };
        match event {
            EngineEvent::Delta { text, tokens, .. } => {
                ctx.timing.token(&fmt.state.metrics, idx);
                ctx.generated();
                if offsets_wanted {
                    a.offsets.extend(a.text_offsets.take(tokens.len(), &text));
                }
                a.text.push_str(&text);
                a.tokens.extend(tokens);
            }
            EngineEvent::Finished {
                reason,
                text,
                completion_tokens,
                ..
            } => {
                a.text.push_str(&text);
                a.finish = Some(reason);
                a.completion_tokens = completion_tokens;
            }
            EngineEvent::Failed { message } => return Err(ApiError::internal(message)),
        }
    }
    guard.done = true;
    let usage = Usage {
        prompt_tokens,
        completion_tokens: acc.iter().map(|a| a.completion_tokens).sum(),
    };
    account(&fmt.state, ctx.key.as_deref(), &ctx.timing, usage);
    let out_choices: Vec<Value> = acc
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let finish = a.finish.map(finish_str);
            match fmt.kind {
                Kind::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": a.text},
                    "logprobs": if logprobs { fmt.chat_logprobs(&a.tokens) } else { Value::Null },
                    "finish_reason": finish,
                }),
                Kind::Completion => json!({
                    "index": i,
                    "text": a.text,
                    "logprobs": if logprobs { fmt.completion_logprobs(&a.tokens, &a.offsets) } else { Value::Null },
                    "finish_reason": finish,
                }),
            }
        })
        .collect();
    let object = match fmt.kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    let body = json!({"id": fmt.id, "object": object, "created": fmt.created, "model": fmt.model(),
        "system_fingerprint": null, "choices": out_choices, "usage": usage_json(usage)});
    let mut resp = axum::Json(body).into_response();
    resp.extensions_mut().insert(usage);
    Ok(resp)
}

/// Streams the request's events as SSE chunks. The chunks are formatted as hyper polls the response body
/// (no task or channel between the engine's events and the socket); dropping the body (client gone)
/// drops the guard, which cancels the request.
fn stream(
    fmt: Formatter,
    events: futures::stream::BoxStream<'static, (usize, EngineEvent)>,
    guard: InFlight,
    ctx: RunContext,
    include_usage: bool,
) -> Response {
    let usage_out = Usage {
        prompt_tokens: ctx.prompt_tokens,
        completion_tokens: 0,
    };
    let counts = std::sync::Arc::new(StreamCounts::default());
    let mut state = SseState {
        counts: counts.clone(),
        pending: std::collections::VecDeque::new(),
        completion_tokens: 0,
        offsets: vec![TextOffsets::default(); ctx.choices],
        finished: false,
        fmt,
        events,
        guard,
        ctx,
        include_usage,
    };
    // Role first (chat), one chunk per choice.
    if state.fmt.kind == Kind::Chat {
        for i in 0..state.ctx.choices {
            let c = json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
            state.push(state.fmt.chunk(vec![c], include_usage));
        }
    }
    let body = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), st));
            }
            if st.finished {
                return None;
            }
            match st.events.next().await {
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

/// A streamed request between polls of its response body: the SSE events ready to go out, and what the
/// closing chunks need.
struct SseState {
    /// Completion tokens so far, for the access log.
    counts: std::sync::Arc<StreamCounts>,
    pending: std::collections::VecDeque<Event>,
    completion_tokens: usize,
    /// Completions' `text_offset` per choice (logprobs).
    offsets: Vec<TextOffsets>,
    /// Nothing follows the pending events.
    finished: bool,
    fmt: Formatter,
    events: futures::stream::BoxStream<'static, (usize, EngineEvent)>,
    /// Dropped with the body: cancels the engine requests unless they all finished.
    guard: InFlight,
    ctx: RunContext,
    include_usage: bool,
}

impl SseState {
    fn push(&mut self, v: Value) {
        self.pending
            .push_back(Event::default().data(sse_safe(v.to_string())));
    }

    /// A content chunk for a delta (and a finish chunk when the choice ended).
    fn on_event(&mut self, idx: usize, event: EngineEvent) {
        let (text, tokens, finish) = match event {
            EngineEvent::Delta { text, tokens, .. } => {
                self.ctx.timing.token(&self.fmt.state.metrics, idx);
                self.ctx.generated();
                self.counts
                    .completion_tokens
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (text, tokens, None)
            }
            EngineEvent::Finished {
                reason,
                text,
                completion_tokens: n,
                ..
            } => {
                self.completion_tokens += n;
                (text, Vec::new(), Some(reason))
            }
            EngineEvent::Failed { message } => {
                // The error ends the stream; the guard, still armed, cancels whatever is left.
                self.push(ApiError::internal(message).body());
                self.finished = true;
                return;
            }
        };
        let (fmt, logprobs) = (&self.fmt, self.ctx.logprobs);
        // Completions' logprobs carry text offsets: every delta's text moves them on, whether or not it
        // carries tokens. Nothing to count otherwise (this runs once per streamed token).
        let offsets = if logprobs && fmt.kind == Kind::Completion {
            self.offsets
                .get_mut(idx)
                .map(|o| o.take(tokens.len(), &text))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut out = Vec::with_capacity(2);
        if !text.is_empty() || (logprobs && !tokens.is_empty()) {
            let lp = if logprobs && !tokens.is_empty() {
                match fmt.kind {
                    Kind::Chat => fmt.chat_logprobs(&tokens),
                    Kind::Completion => fmt.completion_logprobs(&tokens, &offsets),
                }
            } else {
                Value::Null
            };
            let c = match fmt.kind {
                Kind::Chat => {
                    json!({"index": idx, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
                }
                Kind::Completion => {
                    json!({"index": idx, "text": text, "logprobs": lp, "finish_reason": null})
                }
            };
            out.push(fmt.chunk(vec![c], self.include_usage));
        }
        if let Some(reason) = finish {
            let c = match fmt.kind {
                Kind::Chat => {
                    json!({"index": idx, "delta": {}, "logprobs": null, "finish_reason": finish_str(reason)})
                }
                Kind::Completion => {
                    json!({"index": idx, "text": "", "logprobs": null, "finish_reason": finish_str(reason)})
                }
            };
            out.push(fmt.chunk(vec![c], self.include_usage));
        }
        for v in out {
            self.push(v);
        }
    }

    /// Every choice finished: account the tokens, then the usage chunk (when asked for) and `[DONE]`.
    fn on_end(&mut self) {
        self.guard.done = true;
        let usage = Usage {
            prompt_tokens: self.ctx.prompt_tokens,
            completion_tokens: self.completion_tokens,
        };
        account(
            &self.fmt.state,
            self.ctx.key.as_deref(),
            &self.ctx.timing,
            usage,
        );
        if self.include_usage {
            let mut v = self.fmt.chunk(vec![], false);
            v["usage"] = usage_json(usage);
            self.push(v);
        }
        self.pending.push_back(Event::default().data("[DONE]"));
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
        let v = json!({"text": "a\u{2028}b\u{2029}c\u{85}d"});
        let out = sse_safe(v.to_string());
        assert!(!out.contains(['\u{85}', '\u{2028}', '\u{2029}']));
        assert_eq!(out.lines().count(), 1);
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, v, "the same string after parsing");
        assert_eq!(sse_safe("{}".into()), "{}");
    }

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
