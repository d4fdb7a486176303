//! `POST /v1/chat/completions` and `POST /v1/completions`: parse, validate, apply the chat template,
//! tokenize, check lengths against the context, then hand over to [`super::generation`].

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;

use super::auth::KeyId;
use super::chat_output::ChatParse;
use super::error::ApiError;
use super::generation::{self, Job, Kind};
use super::output::{PromptEcho, TextOffsets};
use super::parse::with_parse_limits;
use super::request::PromptField;
use super::structured::{completion_constraint, constraint_for};
use super::validate::{parse_chat, parse_completion, ParsedChat, ParsedCompletion, Validated};
use super::AppState;
use crate::chat::RenderOptions;
use crate::engine::detokenize::IncrementalDecoder;
use crate::engine::TokenConstraint;

/// The body, or 413 / 400 in OpenAI's format.
pub(crate) fn body_bytes(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.max_body_bytes)
        } else {
            ApiError::bad_request("Could not read the request body")
        }
    })
}

pub(crate) fn check_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if model == &*state.model_name {
        Ok(())
    } else {
        Err(ApiError::model_not_found(model.len()))
    }
}

/// Sets `max_tokens` from the prompt length and checks it fits the context.
fn fit(state: &AppState, v: &mut Validated, longest_prompt: usize) -> Result<(), ApiError> {
    let ctx = state.max_context;
    if longest_prompt == 0 {
        return Err(ApiError::invalid("prompt", "The prompt is empty"));
    }
    if longest_prompt >= ctx {
        return Err(ApiError::invalid(
            "messages",
            format!("The prompt has {longest_prompt} tokens; the model's context is {ctx} tokens"),
        ));
    }
    let room = ctx - longest_prompt;
    match v.max_tokens {
        Some(m) if m > room => Err(ApiError::invalid(
            "max_tokens",
            format!(
                "The prompt has {longest_prompt} tokens and max_tokens is {m}: together more than the \
                 model's context of {ctx} tokens"
            ),
        )),
        Some(m) => {
            v.params.max_tokens = m;
            Ok(())
        }
        None => {
            v.params.max_tokens = room;
            Ok(())
        }
    }
}

fn check_vocab(state: &AppState, prompt: &[u32]) -> Result<(), ApiError> {
    let vocab = state.engine.loaded.model.spec().vocab_size;
    if prompt.iter().any(|&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("Token ids must be below the vocabulary size {vocab}"),
        ));
    }
    Ok(())
}

/// A request ready for the engine: its prompts and validated parameters.
struct Prepared {
    prompts: Vec<Vec<u32>>,
    validated: Validated,
    /// With `echo`: each prompt as echoed.
    echo: Vec<PromptEcho>,
    /// Chat: how the output is parsed.
    chat: ChatParse,
    /// Chat: what the output must follow (structured outputs).
    constraint: Option<Box<dyn TokenConstraint>>,
}

/// A prompt as `echo` shows it: the text as given (token-id prompts: decoded), each token's text, and
/// where each token starts in the text (the incremental detokenizer's releases, as generated tokens).
fn echo_of(state: &AppState, ids: &[u32], text: Option<&str>) -> PromptEcho {
    let tok = &state.engine.loaded.tokenizer;
    let mut decoder = IncrementalDecoder::new(true);
    let mut offsets = TextOffsets::default();
    let mut decoded = String::new();
    let mut starts = Vec::with_capacity(ids.len());
    for &id in ids {
        let piece = decoder.push(tok, id).unwrap_or_default();
        starts.extend(offsets.take(1, &piece));
        decoded.push_str(&piece);
    }
    decoded.push_str(&decoder.flush(tok).unwrap_or_default());
    let text = text.map_or(decoded, str::to_owned);
    let chars = text.chars().count();
    PromptEcho {
        tokens: ids
            .iter()
            .map(|&id| tok.decode(&[id], false).unwrap_or_default())
            .collect(),
        offsets: starts.into_iter().map(|o| o.min(chars)).collect(),
        text,
    }
}

/// Parse, validate, render and tokenize a chat body (on the blocking pool).
fn prepare_chat(state: &AppState, body: &[u8]) -> Result<Prepared, ApiError> {
    let vocab = state.engine.loaded.model.spec().vocab_size;
    let ParsedChat {
        model,
        messages,
        options,
        validated: mut v,
    } = with_parse_limits(state.parse_limits(), || parse_chat(body, vocab))?;
    check_model(state, &model)?;
    let template = state.chat.as_ref().ok_or_else(|| {
        ApiError::bad_request("This model has no chat template; use /v1/completions")
    })?;
    let format = state.output_format;
    if options.tools_active() {
        if !template.renders_tools() {
            return Err(ApiError::invalid(
                "tools",
                "This model's chat template does not show tools to the model; start the server \
                 with a --chat-template that does",
            ));
        }
        if format.tools.is_none() {
            return Err(ApiError::invalid(
                "tools",
                "No tool-call format is known for this model's chat template; start the server \
                 with --tool-parser",
            ));
        }
    }
    let render = RenderOptions {
        add_generation_prompt: true,
        tools: (!options.tools.is_empty()).then_some(&options.tools[..]),
        kwargs: options.kwargs.as_ref(),
    };
    let text = template
        .render_with(&messages, &render)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    drop(messages);
    check_prompt_bytes(state, text.len(), "messages")?;
    let chat = ChatParse {
        reasoning: format.reasoning,
        tools: format.tools.filter(|_| options.tools_active()),
        in_reasoning: format.reasoning.is_some_and(|r| r.open_at_end_of(&text)),
        reasoning_closed: format.reasoning.is_some_and(|r| r.closed_at_end_of(&text)),
        tool_choice: options.tool_choice.clone(),
        parallel_tool_calls: options.parallel_tool_calls,
    };
    if !chat.is_plain() {
        // Markers can be special tokens (Kimi's, Mistral's): the parser needs to see them.
        v.params.skip_special_tokens = false;
    }
    let constraint = constraint_for(state, &options, &chat, v.guided.as_ref())?;
    let prompt = state
        .engine
        .loaded
        .tokenizer
        .encode(&text, false)
        .map_err(|_| ApiError::internal("tokenization failed"))?;
    drop(text);
    fit(state, &mut v, prompt.len())?;
    Ok(Prepared {
        prompts: vec![prompt],
        validated: v,
        echo: Vec::new(),
        chat,
        constraint,
    })
}

/// A prompt text longer than the context can hold whatever it tokenizes to: refused before tokenizing.
fn check_prompt_bytes(state: &AppState, bytes: usize, param: &str) -> Result<(), ApiError> {
    if bytes > state.max_prompt_bytes {
        return Err(ApiError::invalid(
            param,
            format!(
                "The prompt has {bytes} bytes of text, more than the model's context of {} tokens \
                 can hold",
                state.max_context
            ),
        ));
    }
    Ok(())
}

/// Parse, validate and tokenize a completions body (on the blocking pool).
fn prepare_completion(state: &AppState, body: &[u8]) -> Result<Prepared, ApiError> {
    let vocab = state.engine.loaded.model.spec().vocab_size;
    let ParsedCompletion {
        model,
        prompt,
        validated: mut v,
    } = with_parse_limits(state.parse_limits(), || parse_completion(body, vocab))?;
    check_model(state, &model)?;
    let tok = &state.engine.loaded.tokenizer;
    let encode = |t: &str| {
        check_prompt_bytes(state, t.len(), "prompt")?;
        tok.encode(t, true)
            .map_err(|_| ApiError::internal("tokenization failed"))
    };
    let (prompts, texts): (Vec<Vec<u32>>, Vec<String>) = match prompt {
        PromptField::Text(t) => (vec![encode(&t)?], vec![t]),
        PromptField::Texts(ts) => (ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?, ts),
        PromptField::Ids(ids) => (vec![ids], Vec::new()),
        PromptField::IdLists(lists) => (lists, Vec::new()),
    };
    let max = state.parse_limits().max_prompts;
    if prompts.is_empty() || prompts.len() > max {
        return Err(ApiError::invalid(
            "prompt",
            format!("Give between 1 and {max} prompts"),
        ));
    }
    for p in &prompts {
        check_vocab(state, p)?;
    }
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(ApiError::invalid("prompt", "The prompt is empty"));
    }
    fit(state, &mut v, longest)?;
    let echo = if v.echo {
        prompts
            .iter()
            .enumerate()
            .map(|(i, ids)| echo_of(state, ids, texts.get(i).map(String::as_str)))
            .collect()
    } else {
        Vec::new()
    };
    let constraint = completion_constraint(state, v.guided.as_ref())?;
    Ok(Prepared {
        prompts,
        validated: v,
        echo,
        chat: ChatParse::default(),
        constraint,
    })
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    key: Option<Extension<KeyId>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(state, key, body, Kind::Chat).await
}

/// `POST /v1/responses`: the request becomes the equivalent chat request ([`super::responses`]).
pub(crate) async fn responses(
    State(state): State<AppState>,
    key: Option<Extension<KeyId>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(state, key, body, Kind::Responses).await
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    key: Option<Extension<KeyId>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(state, key, body, Kind::Completion).await
}

/// Prepares a request of `kind` on the blocking pool, then runs it through the engine.
async fn answer(
    state: AppState,
    key: Option<Extension<KeyId>>,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let received = std::time::Instant::now();
    let key = key.map(|Extension(KeyId(id))| id);
    let body = body_bytes(&state, body)?;
    let tenant_key = key.clone();
    let (
        Prepared {
            prompts,
            validated: v,
            echo,
            chat,
            constraint,
        },
        responses,
        prefixes,
    ) = state
        .blocking(move |s| {
            let (prepared, responses) = match kind {
                Kind::Chat => (prepare_chat(s, &body)?, None),
                Kind::Completion => (prepare_completion(s, &body)?, None),
                Kind::Responses => {
                    let (chat_body, settings) = with_parse_limits(s.parse_limits(), || {
                        super::responses::to_chat_body(&body)
                    })?;
                    (prepare_chat(s, &chat_body)?, Some(settings))
                }
            };
            // The prompts' places in the prefix cache, under the tenant the server derives from the
            // authenticated key (hashing them here keeps that work off the engine thread).
            let prefixes = s.prefix_keys(&prepared.prompts, tenant_key.as_deref());
            Ok((prepared, responses, prefixes))
        })
        .await?;
    generation::run(
        state,
        Job {
            kind,
            prompts,
            params: v.params,
            stream: v.stream,
            include_usage: v.include_usage,
            received,
            key,
            max_tokens_explicit: v.max_tokens.is_some(),
            echo,
            prompt_logprobs: v.prompt_logprobs,
            chat,
            constraint,
            responses,
            prefixes,
        },
    )
    .await
}
