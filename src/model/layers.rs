//! Shared building blocks: linear projections (optional bias), RMSNorm, the SwiGLU MLP.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::weights::{Fp8Blocks, Matrix, QuantMatrix, WeightStore};

/// `y = x Wᵀ (+ b)` over `[T, in]`; W dense or block-quantized.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Matrix,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = store.get_matrix(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias {
            Some(store.get(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Loads the weight in `dtype` (routers run in f32).
    pub fn load_as(
        store: &mut WeightStore,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        dtype: DType,
    ) -> Result<Self> {
        let weight = store.get_as(&format!("{name}.weight"), &[out_dim, in_dim], dtype)?;
        Ok(Self {
            weight: Matrix::Dense(weight),
            bias: None,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut ys = Self::forward_many(x, &[self])?;
        ys.pop()
            .ok_or_else(|| crate::error::Error::Batch("projection failed".into()))
    }

    /// Several projections of the same input in one pass (q/k/v, gate/up).
    pub fn forward_many(x: &Tensor, linears: &[&Linear]) -> Result<Vec<Tensor>> {
        Self::products(x, linears)?
            .into_iter()
            .zip(linears)
            .map(|(y, l)| {
                Ok(match &l.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            })
            .collect()
    }

    /// `x · Wᵀ` for each linear, without biases: one pass where all weights take the same kernel,
    /// one at a time where they are held differently.
    fn products(x: &Tensor, linears: &[&Linear]) -> Result<Vec<Tensor>> {
        let dense: Option<Vec<&Tensor>> = linears.iter().map(|l| l.weight.as_dense()).collect();
        let quant: Option<Vec<&QuantMatrix>> = linears
            .iter()
            .map(|l| match &l.weight {
                Matrix::Quant(q) => Some(&**q),
                _ => None,
            })
            .collect();
        let fp8: Option<Vec<&Fp8Blocks>> = linears
            .iter()
            .map(|l| match &l.weight {
                Matrix::Fp8(b) => Some(&**b),
                _ => None,
            })
            .collect();
        Ok(match (dense, quant, fp8) {
            (Some(ws), _, _) => super::cpu::matmul::matmul_wt_many(x, &ws)?,
            (None, Some(ws), _) => super::cpu::quant::matmul_wt_quant(x, &ws)?,
            (None, None, Some(ws)) => super::cpu::fp8::matmul_wt_fp8(x, &ws)?,
            (None, None, None) if linears.len() == 1 => match &linears[0].weight {
                #[cfg(feature = "cuda")]
                Matrix::Gpu(g) => {
                    use candle_core::Module;
                    vec![g.matmul.forward(x)?.to_dtype(x.dtype())?]
                }
                _ => {
                    return Err(crate::error::Error::Batch(
                        "a projection held in no known form".into(),
                    ))
                }
            },
            // Mixed forms: one at a time.
            (None, None, None) => linears
                .iter()
                .map(|l| Ok(Self::products(x, &[l])?.remove(0)))
                .collect::<Result<Vec<_>>>()?,
        })
    }

    pub fn weight(&self) -> &Matrix {
        &self.weight
    }
}

/// Root-mean-square norm over the last dimension.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(store: &mut WeightStore, name: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight = store.get(&format!("{name}.weight"), &[dim])?;
        Ok(Self {
            weight,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps,
        )?)
    }

    /// The scale weights (`[dim]`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// The residual stream `x` plus `delta` (when given) and its norm: `(x + delta, norm(x + delta))`.
    /// One launch on a GPU (`kernels/fused.cu`), the same two ops as before elsewhere.
    pub fn add_then_forward(&self, x: &Tensor, delta: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let Some(delta) = delta else {
            return Ok((x.clone(), self.forward(x)?));
        };
        #[cfg(feature = "cuda")]
        if x.device().is_cuda()
            && x.rank() == 2
            && self.weight.dtype() == x.dtype()
            && crate::cuda::fusions()
        {
            return crate::cuda::add_rms_norm(x, delta, &self.weight, self.eps);
        }
        let sum = (x + delta)?;
        let normed = self.forward(&sum)?;
        Ok((sum, normed))
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    /// `names` are the gate, up and down projection names under `prefix`.
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        names: [&str; 3],
        hidden: usize,
        intermediate: usize,
    ) -> Result<Self> {
        Ok(Self {
            gate: Linear::load(
                store,
                &format!("{prefix}.{}", names[0]),
                intermediate,
                hidden,
                false,
            )?,
            up: Linear::load(
                store,
                &format!("{prefix}.{}", names[1]),
                intermediate,
                hidden,
                false,
            )?,
            down: Linear::load(
                store,
                &format!("{prefix}.{}", names[2]),
                hidden,
                intermediate,
                false,
            )?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut gu = Linear::forward_many(x, &[&self.gate, &self.up])?.into_iter();
        let (Some(g), Some(u)) = (gu.next(), gu.next()) else {
            return Err(crate::error::Error::Batch(
                "gate/up projection failed".into(),
            ));
        };
        self.down.forward(&(candle_nn::ops::silu(&g)? * u)?)
    }
}

impl Linear {
    /// A projection over an existing weight (tied embeddings).
    pub fn from_weight(weight: Matrix) -> Self {
        Self { weight, bias: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::QuantType;
    use candle_core::Device;

    /// q/k/v held in different forms (a quantized file's F16 fallback next to Q8_0 rows) go one at a time
    /// and still get each bias exactly once.
    #[test]
    fn mixed_forms_add_each_bias_once() -> Result<()> {
        let dev = Device::Cpu;
        let (n, k) = (4, 32);
        let values: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
        let dense = Tensor::from_vec(values.clone(), (n, k), &dev)?;
        let quant =
            QuantMatrix::quantize(QuantType::Q8_0, n, k, &values).map_err(crate::Error::Batch)?;
        let bias = Tensor::new(&[1f32, 2., 3., 4.], &dev)?;
        let a = Linear {
            weight: Matrix::Dense(dense),
            bias: Some(bias.clone()),
        };
        let b = Linear {
            weight: Matrix::Quant(std::sync::Arc::new(quant)),
            bias: Some(bias),
        };
        let x = Tensor::ones((1, k), DType::F32, &dev)?;
        let both = Linear::forward_many(&x, &[&a, &b])?;
        let alone = [a.forward(&x)?, b.forward(&x)?];
        for (m, s) in both.iter().zip(&alone) {
            let diff = (m - s)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{diff}");
        }
        Ok(())
    }
}
