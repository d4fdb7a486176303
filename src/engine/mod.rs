//! Turning logits into text: sampling and the generation loop. (The continuous-batching engine thread and
//! scheduler build on these.)

pub mod generate;
pub mod sampler;

pub use generate::{generate, FinishReason, GenerateOutput, GenerateParams};
pub use sampler::{Sampler, SamplingParams};
