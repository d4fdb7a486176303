//! Checkpoint files: where they come from (disk or embedded) and the safetensors weight store.

pub mod gguf;
pub mod source;
pub mod store;

pub use source::{EmbeddedModel, FileBytes, ModelSource};
pub use store::{matrix_dtype, Fp8Blocks, StoreSummary, WeightStore};
