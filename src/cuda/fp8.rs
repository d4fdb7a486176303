//! Block-FP8 expert weights on the GPU, kept as stored (one byte per weight plus one f32 scale per
//! `br × bc` block), and the launcher of `kernels/expert_fp8.cu`: the decode-path grouped projections
//! reading them, with SwiGLU fused into the gate/up pass — half the bytes of the bf16 the weights were
//! dequantized to before.

use candle_core::{DType, Device, Tensor};

use super::moe::SortedRoutes;
use super::{cuda_device, dtype_suffix, launch, output, ptr, Module};
use crate::error::{Error, Result};

/// Every expert's copy of one projection, stacked: `[E, N, K]` e4m3 bytes and `[E, N / br, ⌈K / bc⌉]`
/// f32 scales (the stored `weight_scale_inv`, multiplied in).
pub struct Fp8Stack {
    bytes: Tensor,
    scales: Tensor,
    block: (usize, usize),
}

impl Fp8Stack {
    /// From host bytes (`experts · n · k`, row-major per expert) and scales (`experts · n/br · ⌈k/bc⌉`),
    /// uploaded to `device`. `n` must be a multiple of `br` (stacked gate and up rows share no block) and
    /// `k` of 16 (one 16-byte load per lane), with 16 dividing `bc`.
    pub fn new(
        bytes: Vec<u8>,
        scales: Vec<f32>,
        shape: [usize; 3],
        block: (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let [e, n, k] = shape;
        let (br, bc) = block;
        let scale_count = e * (n / br.max(1)) * k.div_ceil(bc.max(1));
        if br == 0
            || bc == 0
            || !n.is_multiple_of(br)
            || !k.is_multiple_of(16)
            || !bc.is_multiple_of(16)
            || bytes.len() != e * n * k
            || scales.len() != scale_count
        {
            return Err(Error::Device(format!(
                "FP8 experts [{e}, {n}, {k}] in {br}x{bc} blocks: the GPU kernel takes row counts in \
                 whole blocks and widths in multiples of 16 ({} bytes, {} scales given)",
                bytes.len(),
                scales.len()
            )));
        }
        Ok(Self {
            bytes: Tensor::from_vec(bytes, e * n * k, device)?,
            scales: Tensor::from_vec(scales, scale_count, device)?,
            block,
        })
    }

    /// Bytes held on the device.
    pub fn byte_len(&self) -> usize {
        self.bytes.elem_count() + 4 * self.scales.elem_count()
    }
}

/// `expert_matmul` / `expert_glu` over FP8 weights `w` of shape `[E, n, k]` (see [`super::expert_matmul`]):
/// `x` bf16 or f16 `[T, k]` (`in_div` = top-k) or `[T·k, k]` (`in_div` = 1).
#[allow(clippy::too_many_arguments)]
pub fn expert_matmul_fp8(
    x: &Tensor,
    w: &Fp8Stack,
    n: usize,
    sorted: &SortedRoutes,
    in_div: usize,
    scale: Option<&Tensor>,
    glu: bool,
) -> Result<Tensor> {
    let (_, k) = x.dims2()?;
    let e = sorted.num_experts;
    let rows = sorted.assignments.elem_count();
    if w.bytes.elem_count() != e * n * k || in_div == 0 || (glu && !n.is_multiple_of(2)) {
        return Err(Error::Device(format!(
            "FP8 expert matmul: input [_, {k}], {} weight bytes for [{e}, {n}, {k}]",
            w.bytes.elem_count()
        )));
    }
    if !matches!(x.dtype(), DType::BF16 | DType::F16) {
        return Err(Error::Device(format!(
            "FP8 experts take bf16 or f16 activations, not {:?}",
            x.dtype()
        )));
    }
    let out_cols = if glu { n / 2 } else { n };
    if rows == 0 {
        return Ok(Tensor::zeros((0, out_cols), x.dtype(), x.device())?);
    }
    let x = x.contiguous()?;
    if !ptr(&x)?.is_multiple_of(16) {
        return Err(Error::Device("FP8 expert input not 16-byte aligned".into()));
    }
    let dev = cuda_device(&x)?;
    let out = output((rows, out_cols), x.dtype(), x.device())?;
    let kind = if glu { "glu" } else { "matmul" };
    let name = format!("expert_{kind}_fp8_{}", dtype_suffix(x.dtype())?);
    let pointers = [
        ptr(&x)?,
        ptr(&w.bytes)?,
        ptr(&w.scales)?,
        ptr(&sorted.assignments)?,
        ptr(&sorted.offsets)?,
        ptr(&sorted.active)?,
        scale.map_or(Ok(0u64), ptr)?,
        ptr(&out)?,
    ];
    let ints = [
        n as i32,
        k as i32,
        in_div as i32,
        e as i32,
        w.block.0 as i32,
        w.block.1 as i32,
    ];
    let cfg = super::moe::expert_launch_config(out_cols, glu, sorted);
    // SAFETY: the stack holds e·n·k bytes and its scales (checked in `Fp8Stack::new`: n in whole row
    // blocks, k a multiple of 16 so every 16-byte load stays in its row and block); x is [_, k] aligned
    // to 16 bytes; assignment indices come from moe_sort.
    unsafe { launch(dev, Module::ExpertFp8, &name, cfg, &pointers, &ints, &[]) }?;
    Ok(out)
}
