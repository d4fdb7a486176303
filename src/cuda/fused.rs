//! Launchers of `kernels/fused.cu`: the residual add fused with the RMSNorm after it, the sum of a
//! token's top-k expert rows, and a grouped-query attention layer's q/k norm + rope + KV write — each one
//! launch where candle ops take two to eight.

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::{DType, Tensor};

use super::{cuda_device, dtype_suffix, launch, output, ptr, Module};
use crate::error::{Error, Result};

const NORM_THREADS: u32 = 256;

/// 0: not set yet (read `MOESERVE_CUDA_FUSIONS` once), 1: on, 2: off.
static FUSIONS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Turns the fused decode kernels (this file's, SwiGLU inside the expert pass) on or off for the
/// process (`--cuda-fusions`); off runs the candle ops they replace — for measuring what they save and
/// for ruling them out on a GPU where something is wrong, without a rebuild.
pub fn set_fusions(on: bool) {
    FUSIONS.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the fused decode kernels run: `--cuda-fusions`, else the environment variable
/// `MOESERVE_CUDA_FUSIONS=off` (test binaries), else on.
pub fn fusions() -> bool {
    use std::sync::atomic::Ordering;
    match FUSIONS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var("MOESERVE_CUDA_FUSIONS").map_or(true, |v| {
                !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "off" | "0" | "false" | "no"
                )
            });
            // A racing `set_fusions` wins: only an unset value is replaced.
            let _ = FUSIONS.compare_exchange(
                0,
                if on { 1 } else { 2 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            FUSIONS.load(Ordering::Relaxed) == 1
        }
    }
}

/// `x + d` and its RMSNorm with `weight` (`[H]`): returns `(x + d, rmsnorm(x + d) · weight)`, both
/// `[T, H]` like `x`, with candle's rounding (the sum rounded to the dtype before the norm reads it).
pub fn add_rms_norm(x: &Tensor, d: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (t, h) = x.dims2()?;
    if d.dims() != x.dims()
        || weight.dims() != [h]
        || d.dtype() != x.dtype()
        || weight.dtype() != x.dtype()
    {
        return Err(Error::Device(format!(
            "add + rms norm of {:?} {:?}, {:?} {:?}, weight {:?} {:?}",
            x.dims(),
            x.dtype(),
            d.dims(),
            d.dtype(),
            weight.dims(),
            weight.dtype()
        )));
    }
    let (x, d) = (x.contiguous()?, d.contiguous()?);
    let sum = output((t, h), x.dtype(), x.device())?;
    let normed = output((t, h), x.dtype(), x.device())?;
    if t == 0 {
        return Ok((sum, normed));
    }
    let dev = cuda_device(&x)?;
    let name = format!("add_rms_norm_{}", dtype_suffix(x.dtype())?);
    let pointers = [ptr(&x)?, ptr(&d)?, ptr(weight)?, ptr(&sum)?, ptr(&normed)?];
    let ints = [h as i32];
    let cfg = LaunchConfig {
        grid_dim: (t as u32, 1, 1),
        block_dim: (NORM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: all five tensors are contiguous with the shapes checked above (weight [H]).
    unsafe { launch(dev, Module::Fused, &name, cfg, &pointers, &ints, &[eps]) }?;
    Ok((sum, normed))
}

/// Sums each token's `k` consecutive rows of `y` (`[T·k, H]`): `[T, H]`, in f32, rounded once.
pub fn moe_combine(y: &Tensor, k: usize) -> Result<Tensor> {
    let (rows, h) = y.dims2()?;
    if k == 0 || !rows.is_multiple_of(k) {
        return Err(Error::Device(format!(
            "combining {rows} expert rows in groups of {k}"
        )));
    }
    let t = rows / k;
    let out = output((t, h), y.dtype(), y.device())?;
    if t == 0 || h == 0 {
        return Ok(out);
    }
    let y = y.contiguous()?;
    let dev = cuda_device(&y)?;
    let name = format!("moe_combine_{}", dtype_suffix(y.dtype())?);
    let pointers = [ptr(&y)?, ptr(&out)?];
    let ints = [t as i32, k as i32, h as i32];
    let cfg = LaunchConfig {
        grid_dim: ((t * h).div_ceil(256).clamp(1, 4096) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: y is [t·k, h] contiguous, out [t, h].
    unsafe { launch(dev, Module::Fused, &name, cfg, &pointers, &ints, &[]) }?;
    Ok(out)
}

/// One grouped-query attention layer's step inputs for [`qk_norm_rope_write`].
pub struct QkvStep<'a> {
    /// `[T, nh·hd]`, `[T, nkv·hd]`, `[T, nkv·hd]` (the projections' outputs).
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// Per-head RMSNorm weights (`[hd]`) of q and k, with their epsilon (Qwen3), or none.
    pub norms: Option<(&'a Tensor, &'a Tensor, f32)>,
    /// `[T, rotary_dim/2]` each, in the compute dtype.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub rotary_dim: usize,
    pub interleaved: bool,
    /// `[T]` u32 cache slots ([`super::PAD_SLOT`] writes nothing).
    pub slots: &'a Tensor,
    /// The layer's cache, `[slots, nkv, hd]` each.
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

const QKV_THREADS: u32 = 128;
const QKV_MAX_HD: usize = 512;

/// Norms q and k per head (when asked), ropes them, writes k and v into the cache at the step's slots and
/// returns q `[T, nh, hd]`: one launch for what takes about eight candle ops. `None` where the kernel does
/// not take the shapes (the caller runs the ops).
pub fn qk_norm_rope_write(s: &QkvStep<'_>) -> Result<Option<Tensor>> {
    let (nh, nkv, hd, rd) = (s.num_heads, s.num_kv_heads, s.head_dim, s.rotary_dim);
    let dtype = s.q.dtype();
    let t = s.q.dim(0)?;
    let same = |x: &Tensor| x.dtype() == dtype;
    let fits = hd <= QKV_MAX_HD
        && rd <= hd
        && rd.is_multiple_of(2)
        && [s.k, s.v, s.cos, s.sin, s.k_cache, s.v_cache]
            .iter()
            .all(|x| same(x))
        && s.norms.is_none_or(|(qn, kn, _)| same(qn) && same(kn))
        && s.q.elem_count() == t * nh * hd
        && s.k.elem_count() == t * nkv * hd
        && s.v.elem_count() == t * nkv * hd
        && s.cos.elem_count() == t * rd / 2
        && s.sin.elem_count() == t * rd / 2
        && s.slots.elem_count() == t
        && s.slots.dtype() == DType::U32;
    if !fits {
        return Ok(None);
    }
    let (q, k, v) = (s.q.contiguous()?, s.k.contiguous()?, s.v.contiguous()?);
    let (cos, sin) = (s.cos.contiguous()?, s.sin.contiguous()?);
    let q_out = output((t, nh, hd), dtype, q.device())?;
    if t == 0 {
        return Ok(Some(q_out));
    }
    let dev = cuda_device(&q)?;
    let name = format!("qk_norm_rope_write_{}", dtype_suffix(dtype)?);
    let (qn, kn, eps) = match s.norms {
        Some((qn, kn, eps)) => (ptr(qn)?, ptr(kn)?, eps),
        None => (0, 0, 0.0),
    };
    let pointers = [
        ptr(&q)?,
        ptr(&k)?,
        ptr(&v)?,
        qn,
        kn,
        ptr(&cos)?,
        ptr(&sin)?,
        ptr(s.slots)?,
        ptr(&q_out)?,
        ptr(s.k_cache)?,
        ptr(s.v_cache)?,
    ];
    let ints = [
        nh as i32,
        nkv as i32,
        hd as i32,
        rd as i32,
        i32::from(s.interleaved),
    ];
    let cfg = LaunchConfig {
        grid_dim: (t as u32, (nh + nkv) as u32, 1),
        block_dim: (QKV_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: element counts and dtypes checked above; hd within the kernel's shared row; every slot
    // is below the cache's rows (checked when the batch was built) or PAD_SLOT.
    unsafe { launch(dev, Module::Fused, &name, cfg, &pointers, &ints, &[eps]) }?;
    Ok(Some(q_out))
}

/// Each row's argmax of f32 `logits` (`[rows, n]`): `[rows]` u32, the lowest index among equal maxima
/// (as the host sampler's argmax; candle's GPU argmax breaks ties by thread); NaN is never chosen (the
/// host's stops at a NaN in the first place only).
pub fn row_argmax(logits: &Tensor) -> Result<Tensor> {
    let (rows, n) = logits.dims2()?;
    if logits.dtype() != DType::F32 || n == 0 || n > i32::MAX as usize {
        return Err(Error::Device(format!(
            "argmax of {:?} rows of {n}",
            logits.dtype()
        )));
    }
    let out = output(rows, DType::U32, logits.device())?;
    if rows == 0 {
        return Ok(out);
    }
    let logits = logits.contiguous()?;
    let dev = cuda_device(&logits)?;
    let pointers = [ptr(&logits)?, ptr(&out)?];
    let ints = [n as i32];
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: logits [rows, n] contiguous f32, out [rows] u32.
    unsafe {
        launch(
            dev,
            Module::Fused,
            "row_argmax_f32",
            cfg,
            &pointers,
            &ints,
            &[],
        )
    }?;
    Ok(out)
}

/// MLA's step inputs for [`mla_latent_write`] and [`mla_query`].
pub struct MlaRope<'a> {
    /// `[T, R/2]` each, in the compute dtype.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub interleaved: bool,
}

/// Writes MLA's latent rows into the layer's cache (`[slots, 1, L + R]`) at `slots`: the first `l` of
/// `ckv` (`[T, L + R]`, the kv_a projection) RMSNorm-ed with `norm` (`[L]`, `eps`), the last `r` roped.
/// `Ok(false)` where the kernel does not take the shapes (the caller runs the ops).
#[allow(clippy::too_many_arguments)]
pub fn mla_latent_write(
    ckv: &Tensor,
    norm: &Tensor,
    eps: f32,
    rope: &MlaRope<'_>,
    slots: &Tensor,
    cache: &Tensor,
    l: usize,
    r: usize,
) -> Result<bool> {
    let t = ckv.dim(0)?;
    let dtype = ckv.dtype();
    let fits = r <= QKV_MAX_HD
        && r.is_multiple_of(2)
        && ckv.elem_count() == t * (l + r)
        && norm.elem_count() == l
        && [norm, rope.cos, rope.sin, cache]
            .iter()
            .all(|x| x.dtype() == dtype)
        && rope.cos.elem_count() == t * r / 2
        && rope.sin.elem_count() == t * r / 2
        && slots.elem_count() == t
        && slots.dtype() == DType::U32
        && cache.elem_count().is_multiple_of(l + r);
    if !fits {
        return Ok(false);
    }
    if t == 0 {
        return Ok(true);
    }
    let (ckv, cos, sin) = (
        ckv.contiguous()?,
        rope.cos.contiguous()?,
        rope.sin.contiguous()?,
    );
    let dev = cuda_device(&ckv)?;
    let name = format!("mla_latent_write_{}", dtype_suffix(dtype)?);
    let pointers = [
        ptr(&ckv)?,
        ptr(norm)?,
        ptr(&cos)?,
        ptr(&sin)?,
        ptr(slots)?,
        ptr(cache)?,
    ];
    let ints = [l as i32, r as i32, i32::from(rope.interleaved)];
    let cfg = LaunchConfig {
        grid_dim: (t as u32, 1, 1),
        block_dim: (QKV_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: shapes and dtypes checked above; slots are cache rows (checked when the batch was built)
    // or PAD_SLOT.
    unsafe { launch(dev, Module::Fused, &name, cfg, &pointers, &ints, &[eps]) }?;
    Ok(true)
}

/// MLA's absorbed query rows `[T, nh, L + R]`: `q_lat` (`[nh, T, L]`) beside the roped rope part of `q`
/// (`[T, nh, nope + R]`). `None` where the kernel does not take the shapes.
pub fn mla_query(
    q: &Tensor,
    q_lat: &Tensor,
    rope: &MlaRope<'_>,
    nope: usize,
    r: usize,
) -> Result<Option<Tensor>> {
    let (t, nh, qd) = q.dims3()?;
    let (lh, lt, l) = q_lat.dims3()?;
    let dtype = q.dtype();
    let fits = qd == nope + r
        && lh == nh
        && lt == t
        && r.is_multiple_of(2)
        && [q_lat, rope.cos, rope.sin]
            .iter()
            .all(|x| x.dtype() == dtype)
        && rope.cos.elem_count() == t * r / 2
        && rope.sin.elem_count() == t * r / 2;
    if !fits {
        return Ok(None);
    }
    let out = output((t, nh, l + r), dtype, q.device())?;
    if t == 0 {
        return Ok(Some(out));
    }
    let (q, q_lat) = (q.contiguous()?, q_lat.contiguous()?);
    let (cos, sin) = (rope.cos.contiguous()?, rope.sin.contiguous()?);
    let dev = cuda_device(&q)?;
    let name = format!("mla_query_{}", dtype_suffix(dtype)?);
    let pointers = [ptr(&q)?, ptr(&q_lat)?, ptr(&cos)?, ptr(&sin)?, ptr(&out)?];
    let ints = [
        t as i32,
        nh as i32,
        nope as i32,
        l as i32,
        r as i32,
        i32::from(rope.interleaved),
    ];
    let cfg = LaunchConfig {
        grid_dim: (t as u32, nh as u32, 1),
        block_dim: (QKV_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: q [t, nh, nope + r], q_lat [nh, t, l] contiguous, out [t, nh, l + r].
    unsafe { launch(dev, Module::Fused, &name, cfg, &pointers, &ints, &[]) }?;
    Ok(Some(out))
}
