//! Launchers of `kernels/fused.cu`: the residual add fused with the RMSNorm after it, and the sum of a
//! token's top-k expert rows — each one launch where candle ops take two or three.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::Tensor;

use super::{cuda_device, dtype_suffix, function, launch_error, output, ptr, Module};
use crate::error::{Error, Result};

const NORM_THREADS: u32 = 256;

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
    let f = function(dev, Module::Fused, &name)?;
    let pointers = [ptr(&x)?, ptr(&d)?, ptr(weight)?, ptr(&sum)?, ptr(&normed)?];
    let h_i = h as i32;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    for p in &pointers {
        b.arg(p);
    }
    b.arg(&h_i).arg(&eps);
    let cfg = LaunchConfig {
        grid_dim: (t as u32, 1, 1),
        block_dim: (NORM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: all five tensors are contiguous with the shapes checked above (weight [H]).
    unsafe { b.launch(cfg) }.map_err(|e| launch_error(&name, e))?;
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
    let f = function(dev, Module::Fused, &name)?;
    let (y_p, out_p) = (ptr(&y)?, ptr(&out)?);
    let (t_i, k_i, h_i) = (t as i32, k as i32, h as i32);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&y_p).arg(&out_p).arg(&t_i).arg(&k_i).arg(&h_i);
    let cfg = LaunchConfig {
        grid_dim: ((t * h).div_ceil(256).clamp(1, 4096) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: y is [t·k, h] contiguous, out [t, h].
    unsafe { b.launch(cfg) }.map_err(|e| launch_error(&name, e))?;
    Ok(out)
}
