//! One small file per family: each maps its config.json fields and tensor names onto a
//! [`ModelSpec`](super::spec::ModelSpec). No family is a copy of another.

pub mod deepseek_v2;
pub mod deepseek_v3;
pub mod mixtral;
pub mod olmoe;
pub mod qwen2_moe;
pub mod qwen3_moe;
