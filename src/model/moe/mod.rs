//! The mixture-of-experts block: router (f32) → routed experts (through an [`ExpertsBackend`]) → plus the
//! optional shared expert, gated by sigmoid(gate(x)) where the family asks.

#[cfg(feature = "cuda")]
pub mod cuda_experts;
#[cfg(feature = "cuda")]
pub mod cuda_fp8_experts;
#[cfg(feature = "cuda")]
pub mod cuda_quant_experts;
pub mod experts;
pub(crate) mod fp8_experts;
pub(crate) mod quant_experts;
pub mod router;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::layers::{Linear, Mlp};
use super::spec::{MoeSpec, RouterSpec, TensorNames};
use crate::error::Result;
use crate::weights::{Matrix, QuantMatrix, WeightStore};
pub use experts::{ExpertsBackend, GroupedExperts};
pub use router::Routes;

struct SharedExpert {
    mlp: Mlp,
    gate: Option<Linear>,
}

pub struct MoeBlock {
    spec: MoeSpec,
    /// Tokens routed to each expert since start (observability; counts only).
    load: Arc<[AtomicU64]>,
    router: Linear,
    /// DeepSeek-V3's `e_score_correction_bias` (selection only).
    score_bias: Option<Vec<f32>>,
    experts: Box<dyn ExpertsBackend>,
    shared: Option<SharedExpert>,
    /// Routing on the GPU (no host round-trip), where the device is CUDA.
    #[cfg(feature = "cuda")]
    device_routing: Option<DeviceRouting>,
}

/// What the GPU router needs besides the logits: the kernel's parameters, the correction bias as a
/// tensor, and per-expert counts accumulated on the device until [`MoeBlock::flush_load`].
#[cfg(feature = "cuda")]
struct DeviceRouting {
    params: crate::cuda::RouteParams,
    bias: Option<Tensor>,
    load: Tensor,
}

impl MoeBlock {
    /// `prefix` is `model.layers.{i}`.
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        spec: &MoeSpec,
        names: &TensorNames,
        hidden: usize,
    ) -> Result<Self> {
        let block = format!("{prefix}.{}", names.moe_block);
        let router = Linear::load_as(
            store,
            &format!("{block}.gate"),
            spec.num_experts,
            hidden,
            DType::F32,
        )?;
        let score_bias = match spec.router {
            RouterSpec::DeepseekV3 { .. } => Some(
                store
                    .get_as(
                        &format!("{block}.gate.e_score_correction_bias"),
                        &[spec.num_experts],
                        DType::F32,
                    )?
                    .to_vec1::<f32>()?,
            ),
            _ => None,
        };
        let experts = load_experts(store, &block, names, spec, hidden)?;
        let shared = match &spec.shared {
            Some(s) => Some(SharedExpert {
                mlp: Mlp::load(
                    store,
                    &format!("{block}.{}", s.name),
                    ["gate_proj", "up_proj", "down_proj"],
                    hidden,
                    s.intermediate_size,
                )?,
                gate: if s.gated {
                    Some(Linear::load(
                        store,
                        &format!("{block}.shared_expert_gate"),
                        1,
                        hidden,
                        false,
                    )?)
                } else {
                    None
                },
            }),
            None => None,
        };
        #[cfg(feature = "cuda")]
        let device_routing = if store.device().is_cuda() {
            Some(DeviceRouting {
                params: gpu_route_params(&spec.router, spec.num_experts, spec.top_k)?,
                bias: match &score_bias {
                    Some(b) => Some(Tensor::from_slice(b, b.len(), store.device())?),
                    None => None,
                },
                load: Tensor::zeros(spec.num_experts, DType::U32, store.device())?,
            })
        } else {
            None
        };
        Ok(Self {
            spec: spec.clone(),
            load: (0..spec.num_experts).map(|_| AtomicU64::new(0)).collect(),
            router,
            score_bias,
            experts,
            shared,
            #[cfg(feature = "cuda")]
            device_routing,
        })
    }

    /// Adds the routed-token counts gathered on the device since the last call to the host counters
    /// (one small copy; the engine calls it every so many steps, never per layer).
    pub fn flush_load(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(d) = &self.device_routing {
            let counts = d.load.to_vec1::<u32>()?;
            d.load.zero_set()?;
            for (c, n) in self.load.iter().zip(counts) {
                c.fetch_add(u64::from(n), std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Routes of `x` (`[T, hidden]`), computed in f32.
    pub fn routes(&self, x: &Tensor) -> Result<Routes> {
        let logits = self.router.forward(&x.to_dtype(DType::F32)?)?;
        #[cfg(feature = "cuda")]
        if let Some(d) = &self.device_routing {
            let (ids, weights) = crate::cuda::route(
                &logits,
                &d.params,
                self.spec.top_k,
                d.bias.as_ref(),
                Some(&d.load),
            )?;
            return Ok(Routes { ids, weights });
        }
        router::route(
            &self.spec.router,
            &logits,
            self.spec.top_k,
            self.score_bias.as_deref(),
            &self.load,
            x.device(),
        )
    }

    /// Per-expert routed-token counters of this block.
    /// Bytes one routed expert's weights take as held.
    pub fn bytes_per_expert(&self) -> usize {
        self.experts.bytes_per_expert()
    }

    pub fn expert_load(&self) -> Arc<[AtomicU64]> {
        self.load.clone()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let routes = self.routes(x)?;
        let mut out = self.experts.forward(x, &routes)?;
        if let Some(shared) = &self.shared {
            let mut s = shared.mlp.forward(x)?;
            if let Some(gate) = &shared.gate {
                s = s.broadcast_mul(&candle_nn::ops::sigmoid(&gate.forward(x)?)?)?;
            }
            out = (out + s)?;
        }
        Ok(out)
    }
}

/// Block-FP8 experts kept as stored, when the store keeps FP8 (CPU, weights as stored) and the
/// checkpoint's experts are FP8; `None` otherwise.
fn load_fp8_experts(
    store: &mut WeightStore,
    block: &str,
    names: &TensorNames,
    spec: &MoeSpec,
    hidden: usize,
) -> Result<Option<fp8_experts::Fp8Experts>> {
    let inter = spec.expert_intermediate_size;
    let shapes = [[inter, hidden], [inter, hidden], [hidden, inter]];
    let mut experts = Vec::with_capacity(spec.num_experts);
    for e in 0..spec.num_experts {
        let mut three = Vec::with_capacity(3);
        for (name, shape) in names.expert_proj.iter().zip(&shapes) {
            let full = format!("{block}.experts.{e}.{name}.weight");
            match store.get_fp8(&full, shape)? {
                Some(b) => three.push(b),
                // Not FP8 (or not kept): all experts go through the dense path. Only the first
                // expert's first weight can get here with nothing taken yet.
                None if e == 0 && three.is_empty() => return Ok(None),
                None => {
                    return Err(crate::Error::Batch(format!(
                        "{full}: every routed expert weight must be block-FP8 when the first is"
                    )))
                }
            }
        }
        let [g, u, d]: [crate::weights::Fp8Blocks; 3] = three
            .try_into()
            .map_err(|_| crate::Error::Batch("three expert projections".into()))?;
        experts.push([g, u, d]);
    }
    Ok(Some(fp8_experts::Fp8Experts::new(experts)))
}

/// The experts backend for the store's device: stacked weights and grouped kernels on a GPU, per-expert
/// weights on the CPU.
fn load_experts(
    store: &mut WeightStore,
    block: &str,
    names: &TensorNames,
    spec: &MoeSpec,
    hidden: usize,
) -> Result<Box<dyn ExpertsBackend>> {
    if let Some(fp8) = load_fp8_experts(store, block, names, spec, hidden)? {
        return Ok(Box::new(fp8));
    }
    #[cfg(feature = "cuda")]
    if store.device().is_cuda() {
        // Block-FP8 experts kept as stored for the GPU's FP8 kernels.
        if let Some(blk) = store.dummy_fp8_block() {
            let seed = block
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
            return Ok(Box::new(cuda_fp8_experts::CudaFp8Experts::dummy(
                spec.num_experts,
                hidden,
                spec.expert_intermediate_size,
                blk,
                seed,
                store.device(),
            )?));
        }
        if let Some(fp8) =
            cuda_fp8_experts::CudaFp8Experts::load(store, block, names, spec, hidden)?
        {
            return Ok(Box::new(fp8));
        }
        let names3 = names
            .expert_proj
            .map(|n| format!("{block}.experts.0.{n}.weight"));
        let device = store.device().clone();
        if let Some(stacked) = store.take_stacked_quant(&names3, spec.num_experts)? {
            let projections =
                stacked.map(|(ty, shape, bytes)| cuda_quant_experts::Stacked { ty, shape, bytes });
            return Ok(Box::new(cuda_quant_experts::CudaQuantExperts::new(
                projections,
                &device,
            )?));
        }
    }
    let weights = experts::load_expert_weights(
        store,
        block,
        names.expert_proj,
        spec.num_experts,
        hidden,
        spec.expert_intermediate_size,
    )?;
    let quant: Option<Vec<[Arc<QuantMatrix>; 3]>> = weights
        .iter()
        .map(|(g, u, d)| match (g, u, d) {
            (Matrix::Quant(g), Matrix::Quant(u), Matrix::Quant(d)) => {
                Some([g.clone(), u.clone(), d.clone()])
            }
            _ => None,
        })
        .collect();
    if let Some(quant) = quant.filter(|q| !q.is_empty()) {
        return Ok(Box::new(quant_experts::QuantExperts::new(quant)));
    }
    // Dense (or mixed: a quantized expert matrix among dense ones is widened to f32).
    let weights = weights
        .into_iter()
        .map(|(g, u, d)| {
            let dense = |m: Matrix| -> Result<Tensor> {
                match m {
                    Matrix::Dense(t) => Ok(t),
                    q => q.to_f32(store.device()),
                }
            };
            Ok((dense(g)?, dense(u)?, dense(d)?))
        })
        .collect::<Result<Vec<_>>>()?;
    #[cfg(feature = "cuda")]
    if store.device().is_cuda() && cuda_experts::CudaExperts::supports(store.dtype()) {
        return Ok(Box::new(cuda_experts::CudaExperts::from_weights(weights)?));
    }
    Ok(Box::new(GroupedExperts::from_weights(weights)?))
}

/// The GPU routing kernel's parameters for a router spec (the kernel takes plain numbers).
#[cfg(feature = "cuda")]
pub fn gpu_route_params(
    router: &RouterSpec,
    num_experts: usize,
    top_k: usize,
) -> Result<crate::cuda::RouteParams> {
    use crate::cuda::{RouteMode, RouteParams};
    let (mode, groups, renormalize, scaling) = match router {
        RouterSpec::SoftmaxTopK { renormalize } => (RouteMode::Softmax, None, *renormalize, 1.0),
        RouterSpec::DeepseekV2 {
            groups,
            renormalize,
            scaling,
        } => (RouteMode::GroupedSoftmax, *groups, *renormalize, *scaling),
        RouterSpec::DeepseekV3 {
            n_group,
            topk_group,
            renormalize,
            scaling,
        } => (
            RouteMode::SigmoidGrouped,
            Some((*n_group, *topk_group)),
            *renormalize,
            *scaling,
        ),
    };
    RouteParams::new(mode, groups, renormalize, scaling, num_experts, top_k)
}
