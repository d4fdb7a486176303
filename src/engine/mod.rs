//! The engine: one thread owns the model and the KV cache and runs steps over all live sequences
//! (continuous batching); the scheduler, sampler, incremental detokenizer and stop matching live here.

pub mod compute;
pub mod constraint;
pub mod core;
pub mod detokenize;
pub mod generate;
pub mod handle;
pub mod output;
pub mod request;
pub mod runner;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod stats;
pub mod stop;

pub use crate::kv::prefix_cache::PrefixKey;
pub use constraint::{ConstraintError, TokenConstraint, TokenMask};
pub use generate::{generate, generate_constrained, GenerateOutput, GenerateTiming};
pub use handle::{EngineHandle, SubmitError};
pub use request::{EngineEvent, EngineRequest, FinishReason, RequestParams, TokenLogprob};
pub use sampler::{Sampler, SamplingParams};
pub use scheduler::SchedulerConfig;
