//! Block-FP8 routed experts on a GPU, kept as stored (DeepSeek-V3, Kimi K2, Qwen3-FP8): every expert's
//! gate and up stacked as one `[E, 2·I, H]` e4m3 tensor with its block scales, the downs as `[E, H, I]` —
//! one byte per weight, half the bf16 they were dequantized to before. A step: assignments sorted by
//! expert, gate/up with SwiGLU in one pass, down with the routing weight applied, each token's k rows
//! summed (`kernels/expert_fp8.cu`, `moe_combine`). Prompts run the same streaming kernel (up to eight
//! tokens per weight read), not a tensor-core GEMM.

use candle_core::{Device, Tensor};

use super::experts::ExpertsBackend;
use super::router::Routes;
use crate::cuda::{self, Fp8Stack};
use crate::error::{Error, Result};
use crate::model::spec::{MoeSpec, TensorNames};
use crate::weights::WeightStore;

pub struct CudaFp8Experts {
    gate_up: Fp8Stack,
    down: Fp8Stack,
    num_experts: usize,
    hidden: usize,
    intermediate: usize,
}

/// Whether the kernel takes these shapes: rows in whole scale blocks (the gate/up seam falls on a block
/// edge), widths in multiples of 16, 16 dividing the block width.
fn fits(hidden: usize, inter: usize, (br, bc): (usize, usize)) -> bool {
    br > 0
        && bc.is_multiple_of(16)
        && bc > 0
        && inter.is_multiple_of(br)
        && hidden.is_multiple_of(br)
        && hidden.is_multiple_of(16)
        && inter.is_multiple_of(16)
}

impl CudaFp8Experts {
    /// Takes a layer's routed experts as stored when they are block-FP8 in shapes the kernel takes, one
    /// expert at a time (its bytes appended to the stacks, then dropped); `None` (nothing taken) when
    /// they are not.
    pub(crate) fn load(
        store: &mut WeightStore,
        block: &str,
        names: &TensorNames,
        spec: &MoeSpec,
        hidden: usize,
    ) -> Result<Option<Self>> {
        let (e_count, inter) = (spec.num_experts, spec.expert_intermediate_size);
        let name =
            |e: usize, p: usize| format!("{block}.experts.{e}.{}.weight", names.expert_proj[p]);
        let Some(blk) = store.fp8_block_of(&name(0, 0)) else {
            return Ok(None);
        };
        if !store.fp8_experts_as_stored() || !fits(hidden, inter, blk) {
            return Ok(None);
        }
        let mut stacks = Stacks::with_capacity(e_count, hidden, inter);
        let shapes = [[inter, hidden], [inter, hidden], [hidden, inter]];
        for e in 0..e_count {
            for (p, shape) in shapes.iter().enumerate() {
                let full = name(e, p);
                let b = store.get_fp8_expert(&full, shape)?.ok_or_else(|| {
                    Error::Batch(format!(
                        "{full}: every routed expert weight must be block-FP8 when the first is"
                    ))
                })?;
                if b.block != blk {
                    return Err(Error::Batch(format!(
                        "{full}: FP8 blocks of {:?}, the layer's first expert has {blk:?}",
                        b.block
                    )));
                }
                stacks.push(p, &b);
            }
        }
        Ok(Some(stacks.upload(hidden, inter, blk, store.device())?))
    }

    /// Random FP8 experts of these shapes (`--load-format dummy` of an FP8 checkpoint): finite e4m3
    /// values up to 1.875 with scales of `1/(2·√fan_in)`, made layer by layer on the host.
    pub(crate) fn dummy(
        num_experts: usize,
        hidden: usize,
        inter: usize,
        block: (usize, usize),
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if !fits(hidden, inter, block) {
            return Err(Error::Device(format!(
                "dummy FP8 experts [{hidden}, {inter}] in {block:?} blocks do not fit the GPU kernel"
            )));
        }
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut random_bytes = |n: usize| -> Vec<u8> {
            let mut out = Vec::with_capacity(n + 8);
            while out.len() < n {
                // splitmix64; bit 6 of each byte cleared keeps the exponent at most 7 (no NaN, ≤ 1.875).
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                out.extend_from_slice(&(z & 0xbfbf_bfbf_bfbf_bfbf).to_le_bytes());
            }
            out.truncate(n);
            out
        };
        let (br, bc) = block;
        let stack = |bytes: Vec<u8>, n: usize, k: usize| -> Result<Fp8Stack> {
            let scales = vec![0.5 / (k as f32).sqrt(); num_experts * (n / br) * k.div_ceil(bc)];
            Fp8Stack::new(bytes, scales, [num_experts, n, k], block, device)
        };
        let gate_up = stack(
            random_bytes(num_experts * 2 * inter * hidden),
            2 * inter,
            hidden,
        )?;
        let down = stack(random_bytes(num_experts * hidden * inter), hidden, inter)?;
        Ok(Self {
            gate_up,
            down,
            num_experts,
            hidden,
            intermediate: inter,
        })
    }

    /// From every expert's `(gate, up, down)` block-FP8 weights (tests: the CPU's FP8 experts hold the
    /// same blocks).
    pub fn from_blocks(
        experts: &[[crate::weights::Fp8Blocks; 3]],
        device: &Device,
    ) -> Result<Self> {
        let first = experts
            .first()
            .ok_or_else(|| Error::Device("no experts".into()))?;
        let (inter, hidden) = (first[0].rows, first[0].cols);
        let mut stacks = Stacks::with_capacity(experts.len(), hidden, inter);
        for three in experts {
            for (p, b) in three.iter().enumerate() {
                stacks.push(p, b);
            }
        }
        stacks.upload(hidden, inter, first[0].block, device)
    }
}

/// Every expert's FP8 bytes and scales appended as they are read: each expert's gate rows then up rows
/// (`[E, 2·I, H]`), and the downs (`[E, H, I]`).
struct Stacks {
    gate_up: (Vec<u8>, Vec<f32>),
    down: (Vec<u8>, Vec<f32>),
    experts: usize,
}

impl Stacks {
    fn with_capacity(experts: usize, hidden: usize, inter: usize) -> Self {
        Self {
            gate_up: (Vec::with_capacity(experts * 2 * inter * hidden), Vec::new()),
            down: (Vec::with_capacity(experts * hidden * inter), Vec::new()),
            experts: 0,
        }
    }

    /// Appends projection `which` (0 gate, 1 up, 2 down) of the next expert.
    fn push(&mut self, which: usize, b: &crate::weights::Fp8Blocks) {
        let (bytes, scales) = if which == 2 {
            self.experts += 1;
            &mut self.down
        } else {
            &mut self.gate_up
        };
        bytes.extend_from_slice(&b.bytes);
        scales.extend_from_slice(&b.scales);
    }

    fn upload(
        self,
        hidden: usize,
        inter: usize,
        block: (usize, usize),
        device: &Device,
    ) -> Result<CudaFp8Experts> {
        let e = self.experts;
        let (gu, d) = (self.gate_up, self.down);
        Ok(CudaFp8Experts {
            gate_up: Fp8Stack::new(gu.0, gu.1, [e, 2 * inter, hidden], block, device)?,
            down: Fp8Stack::new(d.0, d.1, [e, hidden, inter], block, device)?,
            num_experts: e,
            hidden,
            intermediate: inter,
        })
    }
}

impl ExpertsBackend for CudaFp8Experts {
    fn forward(&self, x: &Tensor, routes: &Routes) -> Result<Tensor> {
        let (_, k) = routes.ids.dims2()?;
        let sorted = cuda::sort_by_expert(&routes.ids, self.num_experts)?;
        let x = x.contiguous()?;
        let weights = routes.weights.flatten_all()?.contiguous()?;
        let h = cuda::expert_matmul_fp8(
            &x,
            &self.gate_up,
            2 * self.intermediate,
            &sorted,
            k,
            None,
            true,
        )?; // [T·k, I]: silu(gate) · up
        let y = cuda::expert_matmul_fp8(
            &h,
            &self.down,
            self.hidden,
            &sorted,
            1,
            Some(&weights),
            false,
        )?; // [T·k, H], weighted
        cuda::moe_combine(&y, k)
    }

    fn bytes_per_expert(&self) -> usize {
        (self.gate_up.byte_len() + self.down.byte_len()) / self.num_experts.max(1)
    }
}
