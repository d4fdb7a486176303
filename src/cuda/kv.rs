//! The paged cache's kernels: writing a step's rows through the slot mapping (pad rows write nothing) and
//! zeroing freed blocks of every layer in one launch.

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::{DType, Tensor};

use super::{cuda_device, dtype_suffix, launch, ptr, Module};
use crate::error::{Error, Result};

/// A slot-mapping entry that writes nothing: the rows that pad a captured decode step to its batch
/// size (`kernels/kv_cache.cu` skips them).
pub const PAD_SLOT: u32 = u32::MAX;

/// Writes `src` (`[T, ...]`) into rows `slots` (`[T]` u32) of `cache` (`[slots, ...]`, same row size and
/// dtype), in place; rows whose slot is [`PAD_SLOT`] are not written.
pub fn kv_write(cache: &Tensor, slots: &Tensor, src: &Tensor) -> Result<()> {
    let tokens = src.dim(0)?;
    if tokens == 0 {
        return Ok(());
    }
    let row = src.elem_count() / tokens;
    let cache_rows = cache.dim(0)?;
    if cache.elem_count() != cache_rows * row || cache.dtype() != src.dtype() {
        return Err(Error::Kv(format!(
            "cache rows of {} {:?} values, writing rows of {row} {:?}",
            cache.elem_count() / cache_rows.max(1),
            cache.dtype(),
            src.dtype()
        )));
    }
    if slots.dtype() != DType::U32 || slots.elem_count() != tokens {
        return Err(Error::Kv("slot mapping must be u32 [tokens]".into()));
    }
    let src = src.contiguous()?;
    let dev = cuda_device(cache)?;
    let name = format!("kv_write_{}", dtype_suffix(src.dtype())?);
    let pointers = [ptr(&src)?, ptr(cache)?, ptr(slots)?];
    let ints = [tokens as i32, row as i32];
    let blocks = (tokens * row).div_ceil(256).clamp(1, 8192) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the pointers come from live tensors of the sizes checked above; every slot is a row of
    // the cache (the block tables hand out slots below num_blocks * block_size).
    unsafe { launch(dev, Module::KvCache, &name, cfg, &pointers, &ints, &[]) }?;
    Ok(())
}

/// Zeroes freed blocks of every cache tensor with one launch (instead of one copy per block per
/// tensor): the tensors' addresses and block sizes are uploaded once.
pub struct BlockZeroer {
    /// `[tensors]` i64: each tensor's first byte.
    bases: Tensor,
    /// `[tensors]` i64: bytes one block takes in each.
    block_bytes: Tensor,
    tensors: usize,
    largest_block: usize,
    /// Every block size is a multiple of 16 bytes (16-byte stores), else 2-byte stores.
    wide: bool,
}

impl BlockZeroer {
    /// For `tensors` (each `[num_blocks * block_size, ...]`, contiguous, on one GPU), kept alive by
    /// their owner for as long as this zeroer is used.
    pub fn new(tensors: &[&Tensor], block_size: usize) -> Result<Option<Self>> {
        let Some(first) = tensors.first() else {
            return Ok(None);
        };
        let mut bases = Vec::with_capacity(tensors.len());
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in tensors {
            let slots = t.dim(0)?;
            let per_slot = t.elem_count() / slots.max(1) * t.dtype().size_in_bytes();
            bases.push(ptr(t)? as i64);
            sizes.push((per_slot * block_size) as i64);
        }
        let wide = sizes.iter().all(|b| b % 16 == 0) && bases.iter().all(|p| p % 16 == 0);
        if !wide && sizes.iter().any(|b| b % 2 != 0) {
            return Err(Error::Kv("cache rows of odd byte sizes".into()));
        }
        let largest_block = sizes.iter().copied().max().unwrap_or(0) as usize;
        let n = tensors.len();
        Ok(Some(Self {
            bases: Tensor::from_vec(bases, n, first.device())?,
            block_bytes: Tensor::from_vec(sizes, n, first.device())?,
            tensors: n,
            largest_block,
            wide,
        }))
    }

    /// Zeroes `blocks` (each below the tensors' block count) in every tensor.
    pub fn zero(&self, blocks: &[u32]) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let ids = Tensor::from_slice(blocks, blocks.len(), self.bases.device())?;
        let dev = cuda_device(&self.bases)?;
        let name = if self.wide {
            "kv_zero_blocks_v16"
        } else {
            "kv_zero_blocks_b2"
        };
        let unit = if self.wide { 16 } else { 2 };
        let pointers = [ptr(&self.bases)?, ptr(&self.block_bytes)?, ptr(&ids)?];
        let ints = [blocks.len() as i32];
        let per_tensor = blocks.len() * self.largest_block / unit;
        let cfg = LaunchConfig {
            grid_dim: (
                per_tensor.div_ceil(256).clamp(1, 1024) as u32,
                self.tensors as u32,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: bases and sizes describe live cache tensors (their owner keeps them); the caller's
        // block ids are below the block count, so every store stays inside its tensor.
        unsafe { launch(dev, Module::KvCache, name, cfg, &pointers, &ints, &[]) }?;
        Ok(())
    }
}
