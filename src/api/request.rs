//! OpenAI request shapes (chat, completions), parsed straight from the body; unknown keys are ignored as
//! OpenAI does (fields we do not implement are refused by [`super::validate`]). None of these types derive
//! Debug: they hold request content.

use std::collections::HashMap;

use serde::Deserialize;

use super::parse::{bounded_seq, parse_limits, LIMIT_PREFIX};

/// Chat messages, at most `--max-messages` of them.
pub struct MessageList(pub Vec<RequestMessage>);

impl<'de> Deserialize<'de> for MessageList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MessageList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of messages")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<MessageList, A::Error> {
                bounded_seq(seq, parse_limits().max_messages, "messages").map(MessageList)
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Generation parameters shared by chat and completions (OpenAI plus vLLM's extras).
#[derive(Deserialize, Default)]
pub struct GenerationFields {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// vLLM's extension: the prompt tokens' own logprobs with this many alternatives.
    pub prompt_logprobs: Option<i64>,
    /// vLLM's: special tokens in the output text (`false`) or not (default).
    pub skip_special_tokens: Option<bool>,
    /// vLLM's guided decoding (current and legacy names).
    pub structured_outputs: Option<StructuredOutputsField>,
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
}

/// vLLM's `structured_outputs`: one of `json`, `regex`, `choice`, `json_object` (`grammar` and
/// `structural_tag` are refused).
#[derive(Deserialize, Default)]
pub struct StructuredOutputsField {
    pub json: Option<serde_json::Value>,
    pub regex: Option<String>,
    pub choice: Option<Vec<String>>,
    pub json_object: Option<bool>,
    pub grammar: Option<String>,
    pub structural_tag: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
pub struct RequestMessage {
    pub role: String,
    pub content: Option<MessageContent>,
    /// An assistant turn's calls, sent back with the conversation.
    pub tool_calls: Option<Vec<RequestToolCall>>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
    /// An assistant turn's reasoning, sent back (vLLM's name, and the newer one).
    pub reasoning_content: Option<String>,
    pub reasoning: Option<String>,
}

#[derive(Deserialize)]
pub struct RequestToolCall {
    pub id: Option<String>,
    pub function: RequestFunctionCall,
}

#[derive(Deserialize)]
pub struct RequestFunctionCall {
    pub name: String,
    /// JSON text as OpenAI sends it (some clients send the object).
    pub arguments: Option<serde_json::Value>,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or `{"type": "function", "function": {"name": …}}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum ToolChoiceField {
    Mode(String),
    Named { function: NamedFunction },
}

#[derive(Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

/// `response_format`: `{"type": "text" | "json_object" | "json_schema", "json_schema": {…}}`.
#[derive(Deserialize)]
pub struct ResponseFormatField {
    #[serde(rename = "type")]
    pub kind: String,
    pub json_schema: Option<JsonSchemaField>,
}

#[derive(Deserialize)]
pub struct JsonSchemaField {
    pub name: Option<String>,
    pub schema: Option<serde_json::Value>,
    pub strict: Option<bool>,
}

#[derive(Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: MessageList,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// OpenAI tool definitions, kept as sent (the chat template prints them).
    pub tools: Option<Vec<serde_json::Value>>,
    pub tool_choice: Option<ToolChoiceField>,
    pub parallel_tool_calls: Option<bool>,
    /// Extra chat-template variables (`enable_thinking`, …).
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    pub response_format: Option<ResponseFormatField>,
}

pub enum PromptField {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// One element of a `prompt` list.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptItem {
    Id(u32),
    Text(String),
    Ids(Vec<u32>),
}

/// A list of prompts of one kind, `first` already read: the rest, refused past the prompt limit or when
/// an element is of another kind (`pick` returns `None`).
fn rest_of_prompts<'de, A, T>(
    seq: &mut A,
    first: T,
    pick: fn(PromptItem) -> Option<T>,
) -> Result<Vec<T>, A::Error>
where
    A: serde::de::SeqAccess<'de>,
{
    let max = parse_limits().max_prompts;
    let mut all = vec![first];
    while let Some(item) = seq.next_element::<PromptItem>()? {
        let Some(next) = pick(item) else {
            return Err(serde::de::Error::custom(format!(
                "{LIMIT_PREFIX}mixed prompt kinds"
            )));
        };
        if all.len() == max {
            return Err(serde::de::Error::custom(format!(
                "{LIMIT_PREFIX}more than {max} prompts"
            )));
        }
        all.push(next);
    }
    Ok(all)
}

impl<'de> Deserialize<'de> for PromptField {
    /// Reads the prompt element by element (never buffering the whole list), refusing lists of texts or
    /// of id lists longer than the request's prompt limit and lists that mix kinds.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PromptField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, a list of strings, token ids, or lists of token ids")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PromptField, E> {
                Ok(PromptField::Text(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<PromptField, E> {
                Ok(PromptField::Text(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PromptField, A::Error> {
                let Some(first) = seq.next_element::<PromptItem>()? else {
                    return Ok(PromptField::Texts(Vec::new()));
                };
                match first {
                    PromptItem::Id(id) => {
                        let mut ids = vec![id];
                        while let Some(id) = seq.next_element::<u32>()? {
                            ids.push(id);
                        }
                        Ok(PromptField::Ids(ids))
                    }
                    PromptItem::Text(t) => rest_of_prompts(&mut seq, t, |item| match item {
                        PromptItem::Text(t) => Some(t),
                        _ => None,
                    })
                    .map(PromptField::Texts),
                    PromptItem::Ids(ids) => rest_of_prompts(&mut seq, ids, |item| match item {
                        PromptItem::Ids(ids) => Some(ids),
                        _ => None,
                    })
                    .map(PromptField::IdLists),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptField,
    pub logprobs: Option<u64>,
    pub echo: Option<bool>,
}
