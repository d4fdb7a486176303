//! Rotary position embeddings: inverse frequencies for the scaling kinds hub configs ask for (default,
//! linear, dynamic NTK, YaRN with mscale, llama3), computed as HF transformers does, and the per-batch
//! cos/sin tables gathered by token position.

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::error::Result;

/// Rope scaling as read from `rope_scaling` / `rope_parameters`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    /// Dynamic NTK. Applied statically with the base stretched for `factor × original` context (as vLLM
    /// does): HF changes the frequencies while a sequence grows, which a paged cache cannot follow.
    Dynamic {
        factor: f64,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        attention_factor: Option<f64>,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Everything needed to rotate q and k.
#[derive(Debug, Clone)]
pub struct RopeSpec {
    pub theta: f64,
    /// Number of rotated dimensions of each head (even).
    pub rotary_dim: usize,
    pub scaling: RopeScaling,
    pub max_position_embeddings: usize,
    /// Pairs are (2i, 2i+1) instead of (i, i + d/2).
    pub interleaved: bool,
}

/// Parses hub-style `rope_scaling` (or transformers 5 `rope_parameters`). Unknown kinds are an error string.
pub fn parse_scaling(
    value: Option<&Value>,
    max_position_embeddings: usize,
) -> std::result::Result<RopeScaling, String> {
    let Some(obj) = value.and_then(|v| v.as_object()) else {
        return Ok(RopeScaling::None);
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let f = |k: &str| obj.get(k).and_then(|v| v.as_f64());
    let factor = || f("factor").ok_or_else(|| format!("rope_scaling type {kind} needs \"factor\""));
    let original =
        || f("original_max_position_embeddings").map_or(max_position_embeddings, |v| v as usize);
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic { factor: factor()? },
        "yarn" => RopeScaling::Yarn {
            factor: factor()?,
            original_max_position_embeddings: original(),
            attention_factor: f("attention_factor"),
            beta_fast: f("beta_fast").filter(|v| *v != 0.0).unwrap_or(32.0),
            beta_slow: f("beta_slow").filter(|v| *v != 0.0).unwrap_or(1.0),
            mscale: f("mscale"),
            mscale_all_dim: f("mscale_all_dim"),
            truncate: obj
                .get("truncate")
                .and_then(|v| v.as_bool())
                .unwrap_or(true),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: original(),
        },
        other => return Err(format!("unsupported rope scaling type {other:?}")),
    })
}

/// YaRN's magnitude correction.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl RopeSpec {
    fn base_inv_freq(&self, base: f64) -> Vec<f64> {
        let dim = self.rotary_dim as f64;
        (0..self.rotary_dim / 2)
            .map(|i| {
                // As torch computes it: f32 exponent, f32 power.
                let exp = ((2 * i) as f32 / dim as f32) as f64;
                1.0 / (base as f32).powf(exp as f32) as f64
            })
            .collect()
    }

    /// Inverse frequencies and the factor applied to cos/sin ("attention scaling").
    pub fn inv_freq(&self) -> (Vec<f32>, f64) {
        let (inv, att): (Vec<f64>, f64) = match &self.scaling {
            RopeScaling::None => (self.base_inv_freq(self.theta), 1.0),
            RopeScaling::Linear { factor } => (
                self.base_inv_freq(self.theta)
                    .into_iter()
                    .map(|v| v / factor)
                    .collect(),
                1.0,
            ),
            RopeScaling::Dynamic { factor } => {
                let dim = self.rotary_dim as f64;
                let base = self.theta * (*factor * 2.0 - (*factor - 1.0)).powf(dim / (dim - 2.0));
                (self.base_inv_freq(base), 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let att = attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                    (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                        yarn_mscale(*factor, *m) / yarn_mscale(*factor, *a)
                    }
                    _ => yarn_mscale(*factor, 1.0),
                });
                let dim = self.rotary_dim as f64;
                let base = self.theta;
                let orig = *original_max_position_embeddings as f64;
                let corr = |rot: f64| {
                    dim * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
                };
                let (mut low, mut high) = (corr(*beta_fast), corr(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(dim - 1.0);
                if low == high {
                    high += 0.001;
                }
                let extrapolation = self.base_inv_freq(base);
                let inv = extrapolation
                    .iter()
                    .enumerate()
                    .map(|(i, &extra)| {
                        let ramp =
                            ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp as f64;
                        let inter = extra / factor;
                        inter * (1.0 - extra_factor) + extra * extra_factor
                    })
                    .collect();
                (inv, att)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let inv = self
                    .base_inv_freq(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
        };
        (inv.into_iter().map(|v| v as f32).collect(), att)
    }
}

/// Precomputed frequencies of one model; produces cos/sin for the positions of a batch.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    attention_factor: f32,
    pub interleaved: bool,
}

impl Rope {
    pub fn new(spec: &RopeSpec) -> Self {
        let (inv_freq, att) = spec.inv_freq();
        Self {
            inv_freq,
            attention_factor: att as f32,
            interleaved: spec.interleaved,
        }
    }

    /// cos and sin tables `[T, rotary_dim / 2]` for the given token positions.
    pub fn tables(&self, positions: &[u32], device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos() * self.attention_factor);
                sin.push(angle.sin() * self.attention_factor);
            }
        }
        let shape = (positions.len(), half);
        Ok((
            Tensor::from_vec(cos, shape, device)?,
            Tensor::from_vec(sin, shape, device)?,
        ))
    }
}

/// Rotates every dimension of `x` (`[T, heads, dim]`) by the batch's tables (`[T, dim/2]`): pairs
/// `(i, i + dim/2)` (rotate-half), or `(2i, 2i+1)` when `interleaved`.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    Ok(if interleaved {
        // rope_i wants [b, h, t, d].
        let r = x.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
        candle_nn::rotary_emb::rope_i(&r, cos, sin)?
            .squeeze(0)?
            .transpose(0, 1)?
            .contiguous()?
    } else {
        candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?, cos, sin)?.squeeze(0)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scaling: RopeScaling) -> RopeSpec {
        RopeSpec {
            theta: 10000.0,
            rotary_dim: 8,
            scaling,
            max_position_embeddings: 64,
            interleaved: false,
        }
    }

    #[test]
    fn default_frequencies_follow_theta() {
        let (inv, att) = spec(RopeScaling::None).inv_freq();
        assert_eq!(inv.len(), 4);
        assert!((inv[0] - 1.0).abs() < 1e-7);
        assert!((inv[1] - 0.1).abs() < 1e-6);
        assert_eq!(att, 1.0);
    }

    #[test]
    fn linear_divides_by_factor() {
        let (inv, _) = spec(RopeScaling::Linear { factor: 4.0 }).inv_freq();
        assert!((inv[0] - 0.25).abs() < 1e-7);
    }

    #[test]
    fn yarn_mscale_defaults() {
        let value = serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16});
        let scaling = parse_scaling(Some(&value), 64).unwrap();
        let (inv, att) = spec(scaling).inv_freq();
        assert!((att - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        // Highest frequency extrapolated, lowest interpolated.
        assert!((inv[0] - 1.0).abs() < 1e-6);
        let base = spec(RopeScaling::None).inv_freq().0;
        assert!((inv[3] - base[3] / 4.0).abs() < 1e-7);
    }

    #[test]
    fn unknown_scaling_is_an_error() {
        let value = serde_json::json!({"type": "mystery", "factor": 2.0});
        assert!(parse_scaling(Some(&value), 64).is_err());
    }
}
