//! A sequence's list of KV blocks, and the mapping from token position to cache slot.

use super::allocator::BlockAllocator;
use crate::error::{Error, Result};

/// The blocks holding one sequence's keys and values, in position order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<u32>,
}

impl BlockTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Takes over blocks already allocated (and retained) for this table, e.g. a forked prefix.
    pub fn adopt(&mut self, blocks: Vec<u32>) {
        self.blocks.extend(blocks);
    }

    /// Tokens this table can hold.
    pub fn capacity(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }

    /// Blocks still needed to hold `len` tokens.
    pub fn blocks_needed(&self, len: usize, block_size: usize) -> usize {
        len.div_ceil(block_size).saturating_sub(self.blocks.len())
    }

    /// Grows the table to hold `len` tokens. On failure nothing is allocated.
    pub fn reserve(
        &mut self,
        len: usize,
        block_size: usize,
        alloc: &mut BlockAllocator,
    ) -> Result<()> {
        let need = self.blocks_needed(len, block_size);
        if need > alloc.num_free() {
            return Err(Error::Kv(format!(
                "out of blocks: need {need}, {} free",
                alloc.num_free()
            )));
        }
        for _ in 0..need {
            let id = alloc
                .allocate()
                .ok_or_else(|| Error::Kv("allocator ran dry".into()))?;
            self.blocks.push(id);
        }
        Ok(())
    }

    /// Cache slot of the token at `pos`.
    pub fn slot(&self, pos: usize, block_size: usize) -> Result<u32> {
        let block = self
            .blocks
            .get(pos / block_size)
            .ok_or_else(|| Error::Kv(format!("position {pos} beyond the block table")))?;
        Ok(block * block_size as u32 + (pos % block_size) as u32)
    }

    /// Releases every block; returns those that became free (to be zeroed).
    pub fn release(&mut self, alloc: &mut BlockAllocator) -> Result<Vec<u32>> {
        let mut freed = Vec::new();
        for id in self.blocks.drain(..) {
            if alloc.release(id)? {
                freed.push(id);
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_blocks() {
        let mut alloc = BlockAllocator::new(4);
        let mut t = BlockTable::new();
        t.reserve(5, 4, &mut alloc).unwrap();
        assert_eq!(t.blocks(), &[0, 1]);
        assert_eq!(t.slot(0, 4).unwrap(), 0);
        assert_eq!(t.slot(4, 4).unwrap(), 4);
        assert!(t.slot(8, 4).is_err());
        assert!(t.reserve(100, 4, &mut alloc).is_err());
        assert_eq!(t.blocks().len(), 2, "failed reserve allocates nothing");
        assert_eq!(t.release(&mut alloc).unwrap(), vec![0, 1]);
        assert_eq!(alloc.num_free(), 4);
    }
}
