//! Checkpoint files: where they come from (disk or embedded), the safetensors and GGUF weight store, and
//! the forms a weight matrix is held in (dense, or block-quantized in place).

pub mod gguf;
pub(crate) mod matrix;
pub mod quant;
pub(crate) mod quantize;
pub(crate) mod source;
pub(crate) mod store;

pub use matrix::{Fp8Blocks, Matrix};
pub use quant::{QuantMatrix, QuantType};
pub use source::{EmbeddedModel, FileBytes, ModelSource};
pub use store::{matrix_dtype, StoreSummary, WeightStore};
