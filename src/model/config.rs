//! Reads a hub `config.json`, detects the family from `architectures` / `model_type`, and maps it onto a
//! [`ModelSpec`] through the family's file. Shared readers for the fields most families have live here.

use std::path::PathBuf;

use serde_json::Value;

use super::rope::{parse_scaling, RopeSpec};
use super::spec::{AttentionKind, AttentionSpec, Family, ModelSpec, QkNorm};
use crate::error::{Error, Result};
use crate::weights::ModelSource;

pub const CONFIG_FILE: &str = "config.json";

/// A parsed config.json with typed, path-reporting accessors.
pub struct HubConfig {
    pub path: PathBuf,
    pub value: Value,
}

impl HubConfig {
    pub fn load(source: &ModelSource) -> Result<Self> {
        let path = source.path_of(CONFIG_FILE);
        let value = source
            .read_json(CONFIG_FILE)?
            .ok_or_else(|| Error::Config {
                path: path.clone(),
                message: "missing".into(),
            })?;
        Ok(Self { path, value })
    }

    pub fn from_value(path: PathBuf, value: Value) -> Self {
        Self { path, value }
    }

    pub fn err(&self, message: String) -> Error {
        Error::Config {
            path: self.path.clone(),
            message,
        }
    }

    /// A present, non-null field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("missing field \"{key}\"")))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(format!("field \"{key}\" is not a non-negative integer"))),
        }
    }

    /// First of several alternative keys that is present.
    pub fn usize_any(&self, keys: &[&str]) -> Result<usize> {
        for k in keys {
            if let Some(v) = self.opt_usize(k)? {
                return Ok(v);
            }
        }
        Err(self.err(format!("missing field \"{}\"", keys.join("\" or \""))))
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(format!("field \"{key}\" is not a number"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("field \"{key}\" is not a boolean"))),
        }
    }

    pub fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| self.err(format!("field \"{key}\" holds a non-integer")))
                })
                .collect(),
            Some(_) => Err(self.err(format!("field \"{key}\" is not a list"))),
        }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }

    /// Rope theta and scaling from hub fields (`rope_theta`, `rope_scaling`) or transformers 5's
    /// `rope_parameters`.
    pub fn rope(&self, rotary_dim: usize, interleaved: bool) -> Result<RopeSpec> {
        let params = self.get("rope_parameters");
        let theta = match self.get("rope_theta") {
            Some(_) => self.f64_or("rope_theta", 10000.0)?,
            None => params
                .and_then(|p| p.get("rope_theta"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0),
        };
        let max_pos = self.opt_usize("max_position_embeddings")?.unwrap_or(4096);
        let scaling =
            parse_scaling(self.get("rope_scaling").or(params), max_pos).map_err(|m| self.err(m))?;
        Ok(RopeSpec {
            theta,
            rotary_dim,
            scaling,
            max_position_embeddings: max_pos,
            interleaved,
        })
    }

    /// Grouped-query attention as most families describe it.
    pub fn gqa(&self, qkv_bias: bool, qk_norm: QkNorm) -> Result<AttentionSpec> {
        let hidden = self.usize("hidden_size")?;
        let num_heads = self.usize("num_attention_heads")?;
        let num_kv_heads = self.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(self.err(format!(
                "num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = match self.opt_usize("head_dim")? {
            Some(d) => d,
            None => hidden / num_heads,
        };
        let partial = self.f64_or("partial_rotary_factor", 1.0)?;
        let rotary_dim = ((head_dim as f64 * partial) as usize) & !1;
        Ok(AttentionSpec {
            num_heads,
            num_kv_heads,
            head_dim,
            qkv_bias,
            qk_norm,
            clip_qkv: None,
            sliding_window: None,
            rope: self.rope(rotary_dim, false)?,
        })
    }
}

/// Fields every family shares.
#[derive(Debug, Clone, Copy)]
pub struct CommonFields {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl CommonFields {
    pub fn read(cfg: &HubConfig) -> Result<Self> {
        Ok(Self {
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size: cfg.usize("hidden_size")?,
            num_layers: cfg.usize("num_hidden_layers")?,
            rms_norm_eps: cfg.f64_or("rms_norm_eps", 1e-6)?,
            max_position_embeddings: match cfg.opt_usize("max_position_embeddings")? {
                Some(0) => return Err(cfg.err("max_position_embeddings must be at least 1".into())),
                other => other.unwrap_or(4096),
            },
            tie_word_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
        })
    }
}

impl CommonFields {
    /// The model spec of these fields plus the family's own parts.
    pub fn into_spec(
        self,
        family: Family,
        attention: AttentionKind,
        layers: Vec<super::spec::FfnSpec>,
        names: super::spec::TensorNames,
    ) -> ModelSpec {
        debug_assert_eq!(layers.len(), self.num_layers);
        ModelSpec {
            family,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            rms_norm_eps: self.rms_norm_eps,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention,
            layers,
            names,
            mtp_layers: 0,
        }
    }
}
