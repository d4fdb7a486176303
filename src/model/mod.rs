//! Models: config parsing, the architecture-as-data spec, shared layers, MoE, and the one generic decoder.

pub(crate) mod attention;
pub(crate) mod batch;
pub mod config;
pub mod cpu;
pub(crate) mod decode_graphs;
pub(crate) mod decoder;
pub mod families;
pub(crate) mod gguf_config;
pub mod layers;
pub(crate) mod mla;
pub mod moe;
pub mod rope;
pub mod spec;

pub use batch::Batch;
pub use decoder::{LogitsOutput, Model};
pub use spec::{Family, ModelSpec};
