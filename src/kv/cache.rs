//! The cache tensors: per layer, keys and values of every slot, `[num_blocks * block_size, kv_heads, head_dim]`.
//! New keys and values are written in place through a slot mapping; attention gathers a sequence's context
//! through its slots. Freed blocks are zeroed so no content outlives its request.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Paged key/value storage for all layers.
pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    kv_heads: usize,
    head_dim: usize,
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (num_blocks * block_size, kv_heads, head_dim);
        let layers = (0..num_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            block_size,
            num_blocks,
            kv_heads,
            head_dim,
            layers,
        })
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
        2 * self.layers.len() * self.kv_heads * self.head_dim * elem
    }

    /// Writes `k`, `v` (`[T, kv_heads, head_dim]`) into the slots `slots` (`[T]`, u32) of `layer`.
    pub fn write(&self, layer: usize, slots: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
        let (kc, vc) = &self.layers[layer];
        let idx = slots
            .reshape(((), 1, 1))?
            .broadcast_as(k.shape())?
            .contiguous()?;
        kc.scatter_set(&idx, &k.contiguous()?, 0)?;
        vc.scatter_set(&idx, &v.contiguous()?, 0)?;
        Ok(())
    }

    /// Keys and values at `slots` (`[N]`, u32) of `layer`: `[N, kv_heads, head_dim]` each.
    pub fn gather(&self, layer: usize, slots: &Tensor) -> Result<(Tensor, Tensor)> {
        let (kc, vc) = &self.layers[layer];
        Ok((kc.index_select(slots, 0)?, vc.index_select(slots, 0)?))
    }

    /// Zeroes whole blocks in every layer (called when blocks are freed).
    pub fn zero_blocks(&self, blocks: &[u32]) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let Some((k0, _)) = self.layers.first() else {
            return Ok(());
        };
        let zeros = Tensor::zeros(
            (self.block_size, self.kv_heads, self.head_dim),
            k0.dtype(),
            k0.device(),
        )?;
        for (kc, vc) in &self.layers {
            for &b in blocks {
                let offset = b as usize * self.block_size;
                kc.slice_set(&zeros, 0, offset)?;
                vc.slice_set(&zeros, 0, offset)?;
            }
        }
        Ok(())
    }

    /// Copies one block's keys and values, in every layer, into another block.
    pub fn copy_block(&self, src: u32, dst: u32) -> Result<()> {
        let bs = self.block_size;
        for (kc, vc) in &self.layers {
            let k = kc.narrow(0, src as usize * bs, bs)?.copy()?;
            let v = vc.narrow(0, src as usize * bs, bs)?.copy()?;
            kc.slice_set(&k, 0, dst as usize * bs)?;
            vc.slice_set(&v, 0, dst as usize * bs)?;
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
        let cache = KvCache::new(1, 2, 2, 1, 2, DType::F32, &dev)?;
        let k = Tensor::new(&[[[1f32, 2.]], [[3., 4.]]], &dev)?;
        let v = (&k * 10.)?;
        let slots = Tensor::new(&[3u32, 1], &dev)?;
        cache.write(0, &slots, &k, &v)?;
        let (gk, gv) = cache.gather(0, &Tensor::new(&[1u32, 3], &dev)?)?;
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
            &v.narrow(0, 0, 1)?,
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
