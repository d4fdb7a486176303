//! One small file per family: each maps its config.json fields and tensor names onto a
//! [`ModelSpec`](super::spec::ModelSpec). No family is a copy of another.

pub mod mixtral;
pub mod olmoe;
pub mod qwen2_moe;
pub mod qwen3_moe;
