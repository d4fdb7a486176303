//! OpenAI response shapes, serialized straight to the wire (no JSON trees per streamed token): chat
//! completions and their stream chunks, legacy completions, usage, logprobs, tool calls.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// With prefix caching on: the prompt tokens served from the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
        }
    }

    /// The same counts, with `cached` prompt tokens served from the prefix cache.
    pub fn with_cached(mut self, cached: usize) -> Self {
        self.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: cached,
        });
        self
    }
}

/// What every response and chunk starts with.
#[derive(Serialize)]
pub(crate) struct Envelope<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub system_fingerprint: Option<&'a str>,
}

/// `usage` of a chunk: absent unless the client asked for usage; then `null` on every chunk but the last.
pub(crate) type ChunkUsage = Option<Option<Usage>>;

/// `POST /v1/chat/completions`, collected.
#[derive(Serialize)]
pub(crate) struct ChatCompletion<'a> {
    #[serde(flatten)]
    pub envelope: Envelope<'a>,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobs>,
}

#[derive(Serialize)]
pub(crate) struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
pub(crate) struct AssistantMessage {
    pub role: &'static str,
    pub content: Option<String>,
    /// Text the model produced inside its reasoning markers (absent for models that do not reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The same text under the newer name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Serialize, Clone)]
pub(crate) struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Serialize, Clone)]
pub(crate) struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text, as OpenAI sends them.
    pub arguments: String,
}

/// One `chat.completion.chunk`.
#[derive(Serialize)]
pub(crate) struct ChatChunk<'a> {
    #[serde(flatten)]
    pub envelope: Envelope<'a>,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: ChunkUsage,
}

#[derive(Serialize)]
pub(crate) struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// What a chunk adds to a choice's message.
#[derive(Serialize, Default)]
pub(crate) struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A piece of a streamed tool call: the first piece of call `index` carries its id, type and name;
/// later pieces carry more of its arguments text.
#[derive(Serialize)]
pub(crate) struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Serialize)]
pub(crate) struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

/// Chat logprobs: one entry per token.
#[derive(Serialize, Default)]
pub(crate) struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Serialize)]
pub(crate) struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Serialize)]
pub(crate) struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// vLLM's `prompt_logprobs`: per prompt position (the first is `null`), the token's own logprob and
/// rank, then the most likely alternatives, keyed by token id.
pub(crate) type PromptLogprobs = Vec<Option<PromptTokenLogprobs>>;

/// One position of [`PromptLogprobs`]: `{token id: {logprob, rank, decoded_token}}`, the prompt's own
/// token first; an alternative that is the token itself is not repeated.
#[derive(Clone)]
pub(crate) struct PromptTokenLogprobs(pub Vec<(u32, RankedLogprob)>);

#[derive(Serialize, Clone)]
pub(crate) struct RankedLogprob {
    pub logprob: f32,
    pub rank: u32,
    pub decoded_token: String,
}

impl Serialize for PromptTokenLogprobs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (i, (id, v)) in self.0.iter().enumerate() {
            if self.0[..i].iter().all(|(seen, _)| seen != id) {
                map.serialize_entry(&id.to_string(), v)?;
            }
        }
        map.end()
    }
}

/// `POST /v1/completions`: the collected response and each stream chunk.
#[derive(Serialize)]
pub(crate) struct Completion<'a> {
    #[serde(flatten)]
    pub envelope: Envelope<'a>,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: ChunkUsage,
}

#[derive(Serialize)]
pub(crate) struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobs>,
}

/// Legacy completions' logprobs: parallel lists. A prompt's first token (with `echo`) has no logprob:
/// `null` in `token_logprobs` and `top_logprobs`.
#[derive(Serialize, Default, Clone)]
pub(crate) struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<TopMap>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    pub(crate) fn extend(&mut self, other: CompletionLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}

/// The alternatives of one token as a JSON object `{token text: logprob}`, most likely first. Two ids
/// can decode to the same text: the first (more likely) one is kept, so the object has unique keys.
#[derive(Clone)]
pub(crate) struct TopMap(pub Vec<(String, f32)>);

impl Serialize for TopMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if self.0[..i].iter().all(|(seen, _)| seen != k) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope<'static> {
        Envelope {
            id: "x",
            object: "chat.completion.chunk",
            created: 1,
            model: "m",
            system_fingerprint: None,
        }
    }

    #[test]
    fn chunks_serialize_as_openai_sends_them() {
        let c = ChatChunk {
            envelope: envelope(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    content: Some("hi".into()),
                    ..Default::default()
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]}"#
        );
        let with_usage = ChatChunk {
            envelope: envelope(),
            choices: vec![],
            usage: Some(None),
        };
        assert!(serde_json::to_string(&with_usage)
            .unwrap()
            .ends_with(r#""choices":[],"usage":null}"#));
    }

    #[test]
    fn top_logprob_maps_keep_the_first_of_equal_texts() {
        let m = TopMap(vec![
            ("a".into(), -0.5),
            ("b".into(), -1.0),
            ("a".into(), -2.0),
        ]);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":-0.5,"b":-1.0}"#);
    }
}
