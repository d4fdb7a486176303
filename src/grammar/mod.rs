//! Structured outputs: `response_format` (`json_object`, `json_schema`) and tool calls that must follow
//! their schemas, compiled with llguidance into token constraints the engine applies while sampling
//! ([`crate::engine::TokenConstraint`]). The token trie is built once, at startup, from the tokenizer's
//! own token bytes (added tokens marked special, so free text and JSON strings can never contain
//! `<|im_end|>` or a tool-call marker). Compiling happens on the request's blocking-pool task; each mask's
//! work is capped by llguidance's per-step limits (see [`Grammars::new`]).
//!
//! Error messages name the kind of problem, never the schema's text (it is request content).

mod lark;

use std::collections::HashMap;
use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::engine::{ConstraintError, TokenConstraint, TokenMask};
use crate::parsers::{ReasoningMarkers, ToolFormat};
use crate::tokenizer::TextTokenizer;

/// Whitespace allowed between two JSON tokens: one space, or a line break with up to 16 spaces or tabs
/// of indentation — what compact and pretty-printed JSON use, but never a run a model could loop in
/// until `max_tokens` (a known failure of small models under unbounded JSON whitespace).
const JSON_WHITESPACE: &str = r"[\x20]|\r?\n[\x20\x09]{0,16}";

/// Whitespace between JSON tokens under a constraint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JsonWhitespace {
    /// Compact or pretty-printed, bounded at each place ([`JSON_WHITESPACE`]).
    #[default]
    Flexible,
    /// None at all: the fewest tokens; for models that drift into whitespace.
    Compact,
}

/// What a request's output must be.
#[derive(Debug, Clone)]
pub enum Constraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid under this schema (`json_schema`, strict or not, as vLLM does).
    JsonSchema(Value),
    ToolCalls(ToolCalls),
    /// Text matching this regular expression (vLLM's `guided_regex`).
    Regex(String),
    /// Exactly one of these texts (vLLM's `guided_choice`).
    Choice(Vec<String>),
}

/// Tool calls in the model's own format, their arguments valid under the tools' schemas.
#[derive(Debug, Clone)]
pub struct ToolCalls {
    pub format: ToolFormat,
    /// (name, parameters schema) of the tools that may be called.
    pub tools: Vec<(String, Value)>,
    /// More than one call allowed.
    pub parallel: bool,
    /// Text may come first and the calls may be left out (`tool_choice: auto` with strict tools).
    pub optional: bool,
}

/// Where the output starts: reasoning models first think (or start inside their reasoning block).
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputStart {
    pub reasoning: Option<ReasoningMarkers>,
    pub in_reasoning: bool,
}

/// Why a constraint could not be compiled. Messages describe the kind of problem, never the schema.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GrammarError {
    #[error("{0}")]
    Schema(&'static str),
    #[error("structured outputs are not available for this model's tokenizer")]
    Unavailable,
    #[error("tool calls cannot be constrained: {0}")]
    Tools(&'static str),
}

/// The compiled grammar machinery of one model.
pub struct Grammars {
    factory: Arc<ParserFactory>,
    whitespace: JsonWhitespace,
    /// Added tokens by their text: markers that are single tokens appear in grammars by id.
    added: HashMap<String, u32>,
}

impl Grammars {
    /// The token trie over `vocab_size` ids (the logits' width: ids the tokenizer does not know are never
    /// allowed) with `eos` as the end-of-sequence tokens.
    pub fn new(
        tokenizer: &TextTokenizer,
        vocab_size: usize,
        eos: &[u32],
    ) -> Result<Self, GrammarError> {
        let added: HashMap<String, u32> = tokenizer
            .added_tokens()
            .into_iter()
            .filter(|(id, _)| (*id as usize) < vocab_size)
            .map(|(id, text)| (text, id))
            .collect();
        let special: std::collections::HashSet<u32> = added.values().copied().collect();
        let known = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                if id as usize >= known {
                    return Vec::new();
                }
                let mut bytes = tokenizer.token_bytes(id);
                if special.contains(&id) {
                    bytes.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
                }
                bytes
            })
            .collect();
        let eos: Vec<u32> = eos
            .iter()
            .copied()
            .filter(|&e| (e as usize) < vocab_size)
            .collect();
        let first = *eos.first().ok_or(GrammarError::Unavailable)?;
        let build = || {
            let info = TokRxInfo::new(vocab_size as u32, first);
            let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
            let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
            ParserFactory::new(
                &env,
                InferenceCapabilities::default(),
                &SlicedBiasComputer::general_slices(),
            )
        };
        let mut factory = std::panic::catch_unwind(build)
            .map_err(|_| GrammarError::Unavailable)?
            .map_err(|_| GrammarError::Unavailable)?;
        factory.quiet();
        // Work per mask is bounded (the engine thread must never spend time in proportion to what a client
        // sent): ~7 ms of lexer work, ~1.5 ms of parser items at most; errors never print the grammar.
        *factory.limits_mut() = ParserLimits {
            step_lexer_fuel: 100_000,
            step_max_items: 30_000,
            max_lexer_states: 100_000,
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Self {
            factory: Arc::new(factory),
            whitespace: JsonWhitespace::default(),
            added,
        })
    }

    /// The same grammars with `whitespace` between JSON tokens.
    pub fn with_whitespace(mut self, whitespace: JsonWhitespace) -> Self {
        self.whitespace = whitespace;
        self
    }

    /// Compiles `constraint` into a matcher ready for the first token.
    pub fn compile(
        &self,
        constraint: &Constraint,
        start: OutputStart,
    ) -> Result<GrammarMatcher, GrammarError> {
        let grammar = lark::grammar(self, constraint, start)?;
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_lark(grammar))
            .map_err(|e| schema_error(&format!("{e:#}")))?;
        let matcher = Matcher::new(Ok(parser));
        if matcher.is_error() {
            return Err(GrammarError::Schema("the schema could not be compiled"));
        }
        Ok(GrammarMatcher { matcher })
    }

    /// Checks one schema alone (a tool's parameters), so an error can name the tool.
    pub fn check_schema(&self, schema: &Value) -> Result<(), GrammarError> {
        self.compile(
            &Constraint::JsonSchema(schema.clone()),
            OutputStart::default(),
        )
        .map(|_| ())
    }

    /// A marker as a grammar literal: the token itself when it is one added token, else its text.
    fn literal(&self, text: &str) -> String {
        match self.added.get(text) {
            Some(id) => format!("<[{id}]>"),
            None => lark::quote(text),
        }
    }

    /// Whether `text` is one added token (free text can then never contain it).
    fn is_token(&self, text: &str) -> bool {
        self.added.contains_key(text)
    }
}

/// llguidance's compile error as one of our own messages (its text can quote the schema).
fn schema_error(message: &str) -> GrammarError {
    let m = message.to_ascii_lowercase();
    GrammarError::Schema(if m.contains("unimplemented keys") {
        "the schema uses keywords that cannot be enforced (not, if/then/else, uniqueItems, contains, \
         propertyNames, dependencies, unevaluated*)"
    } else if m.contains("unknown format") {
        "the schema uses an unsupported `format`"
    } else if m.contains("oneof") {
        "the schema uses `oneOf` whose branches may overlap; use `anyOf`"
    } else if m.contains("unsatisfiable") {
        "no JSON value satisfies the schema"
    } else if m.contains("$ref") || m.contains("reference") || m.contains("definition not found") {
        "the schema has a `$ref` that does not point into the schema (#/...)"
    } else if m.contains("too large") || m.contains("too big") || m.contains("stack level") {
        "the schema is too large"
    } else if m.contains("pattern") || m.contains("regex") || m.contains("lexer") {
        "a regular expression (a `pattern`, `guided_regex`) cannot be used (no look-around or \
         back-references)"
    } else {
        "the schema is not valid JSON Schema or uses features that cannot be enforced"
    })
}

/// One choice's compiled constraint.
pub struct GrammarMatcher {
    matcher: Matcher,
}

/// llguidance's runtime error as a fixed message (its text can hold output tokens).
fn step_error(e: &anyhow::Error) -> ConstraintError {
    let m = format!("{e}").to_ascii_lowercase();
    ConstraintError(
        if m.contains("too complex") || m.contains("fuel") || m.contains("items") {
            "the grammar's work limit per token was reached"
        } else {
            "the grammar could not continue"
        },
    )
}

impl TokenConstraint for GrammarMatcher {
    fn mask(&mut self) -> Result<TokenMask, ConstraintError> {
        let v = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| step_error(&e))?;
        Ok(TokenMask(v.as_slice().to_vec()))
    }

    fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| step_error(&e))
    }

    fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    fn fork(&self) -> Box<dyn TokenConstraint> {
        Box::new(GrammarMatcher {
            matcher: self.matcher.deep_clone(),
        })
    }
}
