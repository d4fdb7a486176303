//! Paged attention on the GPU: the per-step context description (which cache slots each query token
//! sees) and the launcher of `kernels/paged_attention.cu` for grouped-query and MLA latent caches.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{DType, Device, Tensor};

use super::{cuda_device, dtype_suffix, function, launch, launch_error, output, ptr, Module};
use crate::error::{Error, Result};

/// What every query token of a step attends to, uploaded once per step and shared by all layers.
#[derive(Clone)]
pub struct PagedContext {
    /// `[T, 3]` u32: offset of the token's sequence in `slot_list`, first and one-past-last visible
    /// position.
    meta: Tensor,
    /// Every sequence's context slots, back to back.
    slot_list: Tensor,
    tokens: usize,
    /// Longest visible range of any token (what the kernel's partitions are sized by).
    max_visible: usize,
}

/// One sequence of a step: `query_len` tokens ending at `context_slots.len()`.
pub struct ContextSeq<'a> {
    pub query_len: usize,
    pub context_slots: &'a [u32],
}

/// A step's context on the host: `(meta, slot_list, tokens, max_visible)`.
type Described = (Vec<u32>, Vec<u32>, usize, usize);

/// Lays out a step of sequences back to back (causal; `window` limits how far back a token sees).
fn describe(seqs: &[ContextSeq<'_>], window: Option<usize>) -> Result<Described> {
    let tokens: usize = seqs.iter().map(|s| s.query_len).sum();
    let mut meta = Vec::with_capacity(tokens * 3);
    let mut slot_list = Vec::new();
    let mut max_visible = 0;
    for s in seqs {
        let ctx = s.context_slots.len();
        if s.query_len > ctx {
            return Err(Error::Batch("more query tokens than context".into()));
        }
        let offset = slot_list.len() as u32;
        slot_list.extend_from_slice(s.context_slots);
        for i in 0..s.query_len {
            let end = ctx - s.query_len + i + 1;
            let first = window.map_or(0, |w| end.saturating_sub(w));
            max_visible = max_visible.max(end - first);
            meta.extend_from_slice(&[offset, first as u32, end as u32]);
        }
    }
    Ok((meta, slot_list, tokens, max_visible))
}

impl PagedContext {
    /// Describes a step of sequences laid out back to back (causal; `window` limits how far back a
    /// token sees).
    pub fn new(seqs: &[ContextSeq<'_>], window: Option<usize>, device: &Device) -> Result<Self> {
        let (meta, mut slot_list, tokens, max_visible) = describe(seqs, window)?;
        if slot_list.is_empty() {
            slot_list.push(0);
        }
        let n = slot_list.len();
        Ok(Self {
            meta: Tensor::from_vec(meta, (tokens, 3), device)?,
            slot_list: Tensor::from_vec(slot_list, n, device)?,
            tokens,
            max_visible,
        })
    }

    /// Fixed buffers for steps of `tokens` query tokens with up to `slots` context slots in all and
    /// visible ranges up to `max_visible` (a captured graph reads them at fixed addresses; the kernel's
    /// partitions are sized for `max_visible`). Filled by [`PagedContext::fill`]; empty until then.
    pub fn with_capacity(
        tokens: usize,
        slots: usize,
        max_visible: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            meta: Tensor::zeros((tokens, 3), DType::U32, device)?,
            slot_list: Tensor::zeros(slots.max(1), DType::U32, device)?,
            tokens,
            max_visible,
        })
    }

    /// Writes a step into buffers made by [`PagedContext::with_capacity`], in place (the step must have
    /// exactly their number of tokens and fit their slots and visible range).
    pub fn fill(&self, seqs: &[ContextSeq<'_>], window: Option<usize>) -> Result<()> {
        let (meta, slot_list, tokens, max_visible) = describe(seqs, window)?;
        if tokens != self.tokens
            || slot_list.len() > self.slot_list.elem_count()
            || max_visible > self.max_visible
        {
            return Err(Error::Batch(format!(
                "a step of {tokens} tokens, {} slots, {max_visible} visible does not fit buffers of \
                 {}, {}, {}",
                slot_list.len(),
                self.tokens,
                self.slot_list.elem_count(),
                self.max_visible
            )));
        }
        let device = self.meta.device();
        self.meta
            .slice_set(&Tensor::from_vec(meta, (tokens, 3), device)?, 0, 0)?;
        if !slot_list.is_empty() {
            let n = slot_list.len();
            self.slot_list
                .slice_set(&Tensor::from_vec(slot_list, n, device)?, 0, 0)?;
        }
        Ok(())
    }

    /// Zeroes the buffers (a step's slot lists name where its content lives).
    pub fn clear(&self) -> Result<()> {
        self.meta.zero_set()?;
        self.slot_list.zero_set()?;
        Ok(())
    }
}

/// Where one layer's cache keeps the heads attention reads (strides in elements).
pub struct CacheHeads<'a> {
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub key_dim: usize,
    pub value_dim: usize,
    pub key_slot_stride: usize,
    pub key_head_stride: usize,
    pub value_slot_stride: usize,
    pub value_head_stride: usize,
    /// Query heads per cache head (GQA groups; all heads for MLA).
    pub heads_per_kv: usize,
}

/// Compiled (keys per lane, values per lane, max heads per block) shapes, cheapest first.
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 1, 8),
    (2, 1, 8),
    (2, 2, 8),
    (4, 4, 8),
    (8, 8, 8),
    (18, 16, 4),
];
/// Blocks to aim for when splitting contexts (two waves on a 132-SM H100).
const TARGET_BLOCKS: usize = 264;
/// Shortest context partition worth a block.
const MIN_PARTITION: usize = 128;
const THREADS: u32 = 128;
/// CUDA's limit on grid.z.
const MAX_PARTS: usize = 64;

/// Attention of `q` (`[T, heads, key_dim]`, roped and unscaled) over the cache: `[T, heads, value_dim]`.
pub fn paged_attention(
    q: &Tensor,
    cache: &CacheHeads<'_>,
    ctx: &PagedContext,
    scale: f32,
) -> Result<Tensor> {
    let (t, nh, kd) = q.dims3()?;
    if t != ctx.tokens || kd != cache.key_dim || cache.heads_per_kv == 0 {
        return Err(Error::Batch(format!(
            "paged attention: {t} queries of dim {kd}, context for {} of dim {}",
            ctx.tokens, cache.key_dim
        )));
    }
    if q.dtype() != cache.keys.dtype() || q.dtype() != cache.values.dtype() {
        return Err(Error::Device("query and cache dtypes differ".into()));
    }
    let (need_k, need_v) = (kd.div_ceil(32), cache.value_dim.div_ceil(32));
    let &(kpl, vpl, gmax) = SHAPES
        .iter()
        .find(|(k, v, _)| *k >= need_k && *v >= need_v)
        .ok_or_else(|| {
            Error::Device(format!(
                "paged attention supports key dims up to 576 and value dims up to 512, not {kd}/{}",
                cache.value_dim
            ))
        })?;
    let g = (1..=gmax.min(cache.heads_per_kv))
        .rev()
        .find(|g| cache.heads_per_kv.is_multiple_of(*g))
        .unwrap_or(1);
    let head_blocks = nh / g;
    let blocks = t * head_blocks;
    let max_parts = ctx.max_visible.div_ceil(MIN_PARTITION).max(1);
    let parts = TARGET_BLOCKS
        .div_ceil(blocks.max(1))
        .clamp(1, max_parts.min(MAX_PARTS));
    let part_len = ctx.max_visible.div_ceil(parts).max(1);

    let dev = cuda_device(q)?;
    let dt = dtype_suffix(q.dtype())?;
    let vd = cache.value_dim;
    let q = q.contiguous()?;
    let out = output((t, nh, vd), q.dtype(), q.device())?;
    let (part_acc, part_ml) = if parts > 1 {
        (
            Some(output(t * nh * parts * vd, DType::F32, q.device())?),
            Some(output(t * nh * parts * 2, DType::F32, q.device())?),
        )
    } else {
        (None, None)
    };
    let opt_ptr = |x: &Option<Tensor>| x.as_ref().map_or(Ok(0u64), ptr);
    let name = format!("paged_attention_{dt}_{kpl}_{vpl}");
    let f = function(dev, Module::PagedAttention, &name)?;
    let args_ptr = [
        ptr(&q)?,
        ptr(cache.keys)?,
        ptr(cache.values)?,
        ptr(&ctx.meta)?,
        ptr(&ctx.slot_list)?,
        ptr(&out)?,
        opt_ptr(&part_acc)?,
        opt_ptr(&part_ml)?,
    ];
    let ints = [
        nh as i32,
        kd as i32,
        vd as i32,
        cache.heads_per_kv as i32,
        g as i32,
    ];
    let (kss, khs) = (cache.key_slot_stride as i64, cache.key_head_stride as i32);
    let (vss, vhs) = (
        cache.value_slot_stride as i64,
        cache.value_head_stride as i32,
    );
    let part_len_i = part_len as i32;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    for p in &args_ptr {
        b.arg(p);
    }
    for i in &ints {
        b.arg(i);
    }
    b.arg(&kss)
        .arg(&khs)
        .arg(&vss)
        .arg(&vhs)
        .arg(&scale)
        .arg(&part_len_i);
    let cfg = LaunchConfig {
        grid_dim: (t as u32, head_blocks as u32, parts as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: all pointers come from live tensors; the context's slots were checked against the cache
    // size when the batch was built, and the shapes against the kernel's compiled limits above.
    unsafe { b.launch(cfg) }.map_err(|e| launch_error(&name, e))?;

    if let (Some(acc), Some(ml)) = (&part_acc, &part_ml) {
        let name = format!("attention_combine_{dt}");
        let pointers = [ptr(acc)?, ptr(ml)?, ptr(&out)?];
        let ints = [vd as i32, parts as i32];
        let cfg = LaunchConfig {
            grid_dim: ((t * nh) as u32, 1, 1),
            block_dim: (vd.next_multiple_of(32).min(512) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: partial buffers sized [T, nh, parts, vd] and [T, nh, parts, 2] above.
        unsafe {
            launch(
                dev,
                Module::PagedAttention,
                &name,
                cfg,
                &pointers,
                &ints,
                &[],
            )
        }?;
    }
    Ok(out)
}
