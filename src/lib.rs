//! moeserve: a self-hosted inference server for Mixture-of-Experts language models.
//!
//! Layout (see DESIGN.md): `weights` reads checkpoints, `model` holds the generic decoder and MoE, `kv` the
//! paged cache, `engine` sampling and generation, `loader` ties a checkpoint together.

#![warn(unreachable_pub)]

pub mod api;
pub mod bench;
pub mod chat;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod demo;
pub mod device;
pub mod engine;
pub mod error;
pub mod grammar;
pub mod inspect;
pub mod kv;
pub mod loader;
pub mod logging;
pub mod memory;
pub mod model;
pub mod parsers;
pub mod plan;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
