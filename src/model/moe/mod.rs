//! The mixture-of-experts block: router (f32) → routed experts (through an [`ExpertsBackend`]) → plus the
//! optional shared expert, gated by sigmoid(gate(x)) where the family asks.

mod cpu_experts;
pub mod experts;
pub mod router;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::layers::{Linear, Mlp};
use super::spec::{MoeSpec, RouterSpec, TensorNames};
use crate::error::Result;
use crate::weights::WeightStore;
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
        let experts = GroupedExperts::load(
            store,
            &block,
            names.expert_proj,
            spec.num_experts,
            hidden,
            spec.expert_intermediate_size,
        )?;
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
        Ok(Self {
            spec: spec.clone(),
            load: (0..spec.num_experts).map(|_| AtomicU64::new(0)).collect(),
            router,
            score_bias,
            experts: Box::new(experts),
            shared,
        })
    }

    /// Routes of `x` (`[T, hidden]`), computed in f32.
    pub fn routes(&self, x: &Tensor) -> Result<Routes> {
        let logits = self.router.forward(&x.to_dtype(DType::F32)?)?;
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
