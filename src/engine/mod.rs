//! The engine: one thread owns the model and the KV cache and runs steps over all live sequences
//! (continuous batching); the scheduler, sampler, incremental detokenizer and stop matching live here.

pub mod compute;
pub(crate) mod constraint;
pub mod core;
pub(crate) mod detokenize;
pub(crate) mod generate;
pub(crate) mod handle;
pub(crate) mod output;
pub(crate) mod request;
pub(crate) mod runner;
pub mod sampler;
pub mod scheduler;
pub(crate) mod sequence;
pub mod stats;
pub(crate) mod stop;

pub use crate::kv::prefix_cache::PrefixKey;
pub use constraint::{ConstraintError, TokenConstraint, TokenMask};
pub use generate::{generate, generate_constrained, GenerateOutput, GenerateTiming};
pub use handle::{EngineHandle, SubmitError};
pub use request::{EngineEvent, EngineRequest, FinishReason, RequestParams, TokenLogprob};
pub use sampler::{Sampler, SamplingParams};
pub use scheduler::SchedulerConfig;
