//! MoE routing on the GPU: router logits → top-k experts and weights (`moe_route`), and the assignments
//! sorted by expert (`moe_sort`) in the layout candle's grouped GEMM (`moe_gemm`) reads.

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::{DType, Tensor};

use super::{cuda_device, launch, output, ptr, Module};
use crate::error::{Error, Result};

/// The kernel's limits (shared memory per warp, registers for the chosen list, one lane per group).
pub(super) const MAX_EXPERTS: usize = 512;
pub(super) const MAX_TOP_K: usize = 32;
pub(super) const MAX_GROUPS: usize = 32;

/// A router's semantics as the kernel takes them.
#[derive(Debug, Clone, Copy)]
pub struct RouteParams {
    mode: i32,
    n_group: i32,
    topk_group: i32,
    renormalize: i32,
    scaling: f32,
}

/// The routing rules the kernel implements (the model maps its router spec onto one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// Softmax over the experts, top-k.
    Softmax,
    /// DeepSeek-V2: softmax, top-k within the best groups when grouped.
    GroupedSoftmax,
    /// DeepSeek-V3: sigmoid scores, choice on scores + correction bias within the best groups.
    SigmoidGrouped,
}

impl RouteParams {
    /// The kernel's parameters for `num_experts` experts and `top_k` (`groups`: (groups, groups kept)),
    /// or why it cannot run them.
    pub fn new(
        mode: RouteMode,
        groups: Option<(usize, usize)>,
        renormalize: bool,
        scaling: f32,
        num_experts: usize,
        top_k: usize,
    ) -> Result<Self> {
        if num_experts > MAX_EXPERTS || top_k > MAX_TOP_K || top_k == 0 || top_k > num_experts {
            return Err(Error::Device(format!(
                "GPU routing takes up to {MAX_EXPERTS} experts and top-k up to {MAX_TOP_K}, \
                 not {num_experts} experts top-{top_k}"
            )));
        }
        let mode = match mode {
            RouteMode::Softmax => 0,
            RouteMode::GroupedSoftmax => 1,
            RouteMode::SigmoidGrouped => 2,
        };
        let (n_group, topk_group) = groups.unwrap_or((0, 0));
        if n_group > MAX_GROUPS || (n_group > 0 && !num_experts.is_multiple_of(n_group)) {
            return Err(Error::Device(format!(
                "GPU routing takes up to {MAX_GROUPS} equal expert groups, not {n_group} over \
                 {num_experts} experts"
            )));
        }
        Ok(Self {
            mode,
            n_group: n_group as i32,
            topk_group: topk_group as i32,
            renormalize: i32::from(renormalize),
            scaling,
        })
    }
}

const ROUTE_WARPS: usize = 4;

/// Routes every row of `logits` (`[T, E]` f32): ids `[T, k]` u32 and weights `[T, k]` f32. `bias` is
/// DeepSeek-V3's correction bias (`[E]` f32); each choice is counted into `load` (`[E]` u32).
pub fn route(
    logits: &Tensor,
    params: &RouteParams,
    top_k: usize,
    bias: Option<&Tensor>,
    load: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (t, e) = logits.dims2()?;
    if logits.dtype() != DType::F32 {
        return Err(Error::Device("router logits must be f32".into()));
    }
    let dev = cuda_device(logits)?;
    if t == 0 {
        return Ok((
            Tensor::zeros((0, top_k), DType::U32, logits.device())?,
            Tensor::zeros((0, top_k), DType::F32, logits.device())?,
        ));
    }
    let ids = output((t, top_k), DType::U32, logits.device())?;
    let weights = output((t, top_k), DType::F32, logits.device())?;
    let logits = logits.contiguous()?;
    let opt = |x: Option<&Tensor>| x.map_or(Ok(0u64), ptr);
    let pointers = [
        ptr(&logits)?,
        opt(bias)?,
        ptr(&ids)?,
        ptr(&weights)?,
        opt(load)?,
    ];
    let ints = [
        t as i32,
        e as i32,
        top_k as i32,
        params.mode,
        params.n_group,
        params.topk_group,
        params.renormalize,
    ];
    let cfg = LaunchConfig {
        grid_dim: (t.div_ceil(ROUTE_WARPS) as u32, 1, 1),
        block_dim: ((ROUTE_WARPS * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: shapes checked above and in RouteParams::new (E ≤ MAX_EXPERTS, k ≤ MAX_TOP_K).
    unsafe {
        launch(
            dev,
            Module::MoeRouting,
            "moe_route",
            cfg,
            &pointers,
            &ints,
            &[params.scaling],
        )
    }?;
    Ok((ids, weights))
}

/// A step's expert assignments grouped by expert.
pub struct SortedRoutes {
    /// `[T * k]` u32: assignment index (`token * k + slot`) at each place.
    pub assignments: Tensor,
    /// `[T * k]` u32: the expert of each place (non-decreasing).
    pub experts: Tensor,
    /// `[E + 1]` u32: where each expert's places start.
    pub offsets: Tensor,
    /// `[E + 1]` u32: the experts that have tokens, in order; their number at index E.
    pub active: Tensor,
    pub(super) num_experts: usize,
    /// Upper bound of the number of active experts (known on the host without reading `active`).
    pub(super) max_active: usize,
}

const SORT_THREADS: u32 = 1024;

/// Sorts the assignments of `ids` (`[T, k]` u32) by expert, for any number of tokens.
pub fn sort_by_expert(ids: &Tensor, num_experts: usize) -> Result<SortedRoutes> {
    let n = ids.elem_count();
    let dev = cuda_device(ids)?;
    let assignments = output(n.max(1), DType::U32, ids.device())?;
    let experts = output(n.max(1), DType::U32, ids.device())?;
    let offsets = output(num_experts + 1, DType::U32, ids.device())?;
    let active = output(num_experts + 1, DType::U32, ids.device())?;
    let ids = ids.contiguous()?;
    let pointers = [
        ptr(&ids)?,
        ptr(&assignments)?,
        ptr(&experts)?,
        ptr(&offsets)?,
        ptr(&active)?,
    ];
    let ints = [n as i32, num_experts as i32];
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (SORT_THREADS, 1, 1),
        shared_mem_bytes: (2 * num_experts * 4) as u32,
    };
    // SAFETY: outputs sized n and E + 1; shared memory holds 2·E counters.
    unsafe {
        launch(
            dev,
            Module::MoeRouting,
            "moe_sort",
            cfg,
            &pointers,
            &ints,
            &[],
        )
    }?;
    Ok(SortedRoutes {
        assignments: assignments.narrow(0, 0, n)?,
        experts: experts.narrow(0, 0, n)?,
        offsets,
        active,
        num_experts,
        max_active: n.min(num_experts),
    })
}

/// Warps per block and rows per plain warp of `kernels/expert_common.cuh` (EXPERT_WARPS, R).
const MATMUL_WARPS: usize = 4;
const MATMUL_ROWS_PER_WARP: usize = 2;

/// The grid of the grouped expert kernels (bf16/f16/f32 and FP8 share their skeleton): blocks of
/// [`MATMUL_WARPS`] warps over the output columns — a plain warp computes [`MATMUL_ROWS_PER_WARP`] rows,
/// a GLU warp one output column (two rows) — by the active-expert slots.
pub(super) fn expert_launch_config(
    out_cols: usize,
    glu: bool,
    sorted: &SortedRoutes,
) -> LaunchConfig {
    let per_block = if glu {
        MATMUL_WARPS
    } else {
        MATMUL_WARPS * MATMUL_ROWS_PER_WARP
    };
    LaunchConfig {
        grid_dim: (
            out_cols.div_ceil(per_block) as u32,
            sorted.max_active as u32,
            1,
        ),
        block_dim: ((MATMUL_WARPS * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Grouped expert projection for few tokens per expert: row `a` of the result (`[T·k, N]`) is
/// `weights[e] · x[a / in_div]` (times `scale[a]` when given) for each assignment `a` of expert `e`.
/// `x` is `[T, K]` (`in_div` = k, the tokens) or `[T·k, K]` (`in_div` = 1, one row per assignment);
/// `weights` `[E, N, K]`; `scale` `[T·k]` f32.
pub fn expert_matmul(
    x: &Tensor,
    weights: &Tensor,
    sorted: &SortedRoutes,
    in_div: usize,
    scale: Option<&Tensor>,
) -> Result<Tensor> {
    launch_expert(x, weights, sorted, in_div, scale, false)
}

/// The gate and up projections with SwiGLU applied in the same pass: `weights` is `[E, 2·I, K]` (gate
/// rows then up rows, as the GPU experts stack them); row `a` of the result (`[T·k, I]`) is
/// `silu(gate_e · x) * (up_e · x)` for `x = x[a / in_div]`, computed in f32 and rounded once.
pub fn expert_glu(
    x: &Tensor,
    weights: &Tensor,
    sorted: &SortedRoutes,
    in_div: usize,
) -> Result<Tensor> {
    launch_expert(x, weights, sorted, in_div, None, true)
}

fn launch_expert(
    x: &Tensor,
    weights: &Tensor,
    sorted: &SortedRoutes,
    in_div: usize,
    scale: Option<&Tensor>,
    glu: bool,
) -> Result<Tensor> {
    let (_, k_dim) = x.dims2()?;
    let (e, n, wk) = weights.dims3()?;
    let rows = sorted.assignments.elem_count();
    if wk != k_dim
        || e != sorted.num_experts
        || x.dtype() != weights.dtype()
        || in_div == 0
        || (glu && !n.is_multiple_of(2))
    {
        return Err(Error::Device(format!(
            "expert matmul: input [_, {k_dim}] {:?}, weights [{e}, {n}, {wk}] {:?}",
            x.dtype(),
            weights.dtype()
        )));
    }
    let out_cols = if glu { n / 2 } else { n };
    let dev = cuda_device(x)?;
    if rows == 0 {
        return Ok(Tensor::zeros((0, out_cols), x.dtype(), x.device())?);
    }
    let out = output((rows, out_cols), x.dtype(), x.device())?;
    let x = x.contiguous()?;
    let vec = 16 / x.dtype().size_in_bytes();
    let aligned = |p: u64| p.is_multiple_of(16);
    let vec = if k_dim % vec == 0 && aligned(ptr(&x)?) && aligned(ptr(weights)?) {
        vec
    } else {
        1
    };
    let kind = if glu { "glu" } else { "matmul" };
    let name = format!("expert_{kind}_{}_v{vec}", super::dtype_suffix(x.dtype())?);
    let pointers = [
        ptr(&x)?,
        ptr(weights)?,
        ptr(&sorted.assignments)?,
        ptr(&sorted.offsets)?,
        ptr(&sorted.active)?,
        scale.map_or(Ok(0u64), ptr)?,
        ptr(&out)?,
    ];
    let ints = [n as i32, k_dim as i32, in_div as i32, e as i32];
    let cfg = expert_launch_config(out_cols, glu, sorted);
    // SAFETY: shapes checked above; assignment indices are below rows (moe_sort), input rows below
    // rows / in_div; 16-byte loads only where K is a multiple of the vector width; GLU weights have an
    // even number of rows.
    unsafe { launch(dev, Module::ExpertMatmul, &name, cfg, &pointers, &ints, &[]) }?;
    Ok(out)
}
