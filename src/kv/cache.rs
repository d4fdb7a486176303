//! The cache tensors: per layer, keys `[num_blocks * block_size, heads, dim]` and (for GQA) values of every
//! slot; MLA stores one latent vector per slot as its "key" and no values. New entries are written in place
//! through a slot mapping; attention gathers a sequence's context through its slots. Freed blocks are zeroed
//! so no content outlives its request.

use candle_core::{DType, Device, Tensor};

use super::layout::KvLayout;
use crate::error::Result;

/// Paged key/value storage for all layers.
pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    layout: KvLayout,
    layers: Vec<(Tensor, Option<Tensor>)>,
    /// Unique per cache made in this process (what was captured against which cache).
    id: u64,
    /// On a GPU: zeroes freed blocks of every layer in one launch.
    #[cfg(feature = "cuda")]
    zeroer: Option<crate::cuda::BlockZeroer>,
}

impl KvCache {
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        layout: KvLayout,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let slots = num_blocks * block_size;
        let layers = (0..num_layers)
            .map(|_| {
                let k = Tensor::zeros((slots, layout.k.0, layout.k.1), dtype, device)?;
                let v = match layout.v {
                    Some((h, d)) => Some(Tensor::zeros((slots, h, d), dtype, device)?),
                    None => None,
                };
                Ok((k, v))
            })
            .collect::<Result<Vec<_>>>()?;
        #[cfg(feature = "cuda")]
        let zeroer = if device.is_cuda() {
            let tensors: Vec<&Tensor> = layers
                .iter()
                .flat_map(|(k, v)| std::iter::once(k).chain(v.as_ref()))
                .collect();
            crate::cuda::BlockZeroer::new(&tensors, block_size)?
        } else {
            None
        };
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Self {
            block_size,
            num_blocks,
            layout,
            layers,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            #[cfg(feature = "cuda")]
            zeroer,
        })
    }

    /// Unique per cache made in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Bytes of cache per token (all layers, keys and values).
    pub fn bytes_per_token(&self) -> usize {
        let elem = self
            .layers
            .first()
            .map_or(4, |(k, _)| k.dtype().size_in_bytes());
        self.layers.len() * self.layout.values_per_token() * elem
    }

    /// Writes `k` (and `v`), `[T, heads, dim]`, into the slots `slots` (`[T]`, u32) of `layer`.
    pub fn write(
        &self,
        layer: usize,
        slots: &Tensor,
        k: &Tensor,
        v: Option<&Tensor>,
    ) -> Result<()> {
        let (kc, vc) = &self.layers[layer];
        #[cfg(feature = "cuda")]
        if kc.device().is_cuda() {
            crate::cuda::kv_write(kc, slots, k)?;
            if let (Some(vc), Some(v)) = (vc, v) {
                crate::cuda::kv_write(vc, slots, v)?;
            }
            return Ok(());
        }
        let idx = |shape: &candle_core::Shape| -> Result<Tensor> {
            Ok(slots
                .reshape(((), 1, 1))?
                .broadcast_as(shape)?
                .contiguous()?)
        };
        // The cache may be held in another dtype than the compute (`--kv-cache-dtype`).
        let k = k.to_dtype(kc.dtype())?.contiguous()?;
        kc.scatter_set(&idx(k.shape())?, &k, 0)?;
        if let (Some(vc), Some(v)) = (vc, v) {
            let v = v.to_dtype(vc.dtype())?.contiguous()?;
            vc.scatter_set(&idx(v.shape())?, &v, 0)?;
        }
        Ok(())
    }

    /// The whole cache tensors of one layer (in-place readers).
    pub fn layer(&self, layer: usize) -> (&Tensor, Option<&Tensor>) {
        let (k, v) = &self.layers[layer];
        (k, v.as_ref())
    }

    /// Keys (and values) at `slots` (`[N]`, u32) of `layer`: `[N, heads, dim]`.
    pub fn gather(&self, layer: usize, slots: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (kc, vc) = &self.layers[layer];
        let v = match vc {
            Some(vc) => Some(vc.index_select(slots, 0)?),
            None => None,
        };
        Ok((kc.index_select(slots, 0)?, v))
    }

    /// Zeroes whole blocks in every layer (called when blocks are freed).
    pub fn zero_blocks(&self, blocks: &[u32]) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        if blocks.iter().any(|&b| b as usize >= self.num_blocks) {
            return Err(crate::Error::Kv(format!(
                "zeroing a block beyond the cache's {}",
                self.num_blocks
            )));
        }
        #[cfg(feature = "cuda")]
        if let Some(z) = &self.zeroer {
            return z.zero(blocks);
        }
        let Some((k0, _)) = self.layers.first() else {
            return Ok(());
        };
        let (kh, kd) = self.layout.k;
        let k_zeros = Tensor::zeros((self.block_size, kh, kd), k0.dtype(), k0.device())?;
        let v_zeros = match self.layout.v {
            Some((vh, vd)) => Some(Tensor::zeros(
                (self.block_size, vh, vd),
                k0.dtype(),
                k0.device(),
            )?),
            None => None,
        };
        for (kc, vc) in &self.layers {
            for &b in blocks {
                let offset = b as usize * self.block_size;
                kc.slice_set(&k_zeros, 0, offset)?;
                if let (Some(vc), Some(z)) = (vc, &v_zeros) {
                    vc.slice_set(z, 0, offset)?;
                }
            }
        }
        Ok(())
    }

    /// Copies one block's keys and values, in every layer, into another block. Only the block's own slots
    /// are read and written (`force_contiguous` copies just the view; candle's `copy` would clone the
    /// whole layer's storage).
    pub fn copy_block(&self, src: u32, dst: u32) -> Result<()> {
        let bs = self.block_size;
        for (kc, vc) in &self.layers {
            let k = kc.narrow(0, src as usize * bs, bs)?.force_contiguous()?;
            kc.slice_set(&k, 0, dst as usize * bs)?;
            if let Some(vc) = vc {
                let v = vc.narrow(0, src as usize * bs, bs)?.force_contiguous()?;
                vc.slice_set(&v, 0, dst as usize * bs)?;
            }
        }
        Ok(())
    }

    /// Copy of one block's keys of one layer (tests and audits).
    pub fn block_keys(&self, layer: usize, block: u32) -> Result<Tensor> {
        let (kc, _) = &self.layers[layer];
        Ok(kc.narrow(0, block as usize * self.block_size, self.block_size)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_gather_and_zero() -> Result<()> {
        let dev = Device::Cpu;
        let layout = KvLayout {
            k: (1, 2),
            v: Some((1, 2)),
        };
        let cache = KvCache::new(1, 2, 2, layout, DType::F32, &dev)?;
        let k = Tensor::new(&[[[1f32, 2.]], [[3., 4.]]], &dev)?;
        let v = (&k * 10.)?;
        let slots = Tensor::new(&[3u32, 1], &dev)?;
        cache.write(0, &slots, &k, Some(&v))?;
        let (gk, gv) = cache.gather(0, &Tensor::new(&[1u32, 3], &dev)?)?;
        let gv = gv.unwrap();
        assert_eq!(
            gk.to_vec3::<f32>()?,
            vec![vec![vec![3., 4.]], vec![vec![1., 2.]]]
        );
        assert_eq!(gv.to_vec3::<f32>()?[0][0], vec![30., 40.]);
        cache.copy_block(1, 0)?;
        assert_eq!(
            cache.block_keys(0, 0)?.flatten_all()?.to_vec1::<f32>()?,
            vec![0., 0., 1., 2.]
        );
        cache.write(
            0,
            &Tensor::new(&[2u32], &dev)?,
            &(&k.narrow(0, 0, 1)? * 5.)?,
            Some(&v.narrow(0, 0, 1)?),
        )?;
        assert_eq!(
            cache.block_keys(0, 0)?.flatten_all()?.to_vec1::<f32>()?,
            vec![0., 0., 1., 2.],
            "copy is deep"
        );
        cache.zero_blocks(&[1])?;
        let block = cache.block_keys(0, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(block.iter().all(|x| *x == 0.0));
        let block0 = cache.block_keys(0, 0)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(block0, vec![0., 0., 1., 2.], "other blocks untouched");
        Ok(())
    }
}
