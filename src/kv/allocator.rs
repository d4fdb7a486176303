//! Fixed-size KV blocks handed out by index, with refcounts so that sequences can share a prefix.

use crate::error::{Error, Result};

/// Hands out block ids; a block returns to the free list when its last holder releases it.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    refcounts: Vec<u32>,
    free: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            refcounts: vec![0; num_blocks],
            // Popped from the end: block 0 first.
            free: (0..num_blocks as u32).rev().collect(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.refcounts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// A fresh block with refcount 1, or `None` when none is free.
    pub fn allocate(&mut self) -> Option<u32> {
        let id = self.free.pop()?;
        self.refcounts[id as usize] = 1;
        Some(id)
    }

    /// One more holder of an allocated block (prefix sharing).
    pub fn retain(&mut self, id: u32) -> Result<()> {
        match self.refcounts.get_mut(id as usize) {
            Some(rc) if *rc > 0 => {
                *rc += 1;
                Ok(())
            }
            _ => Err(Error::Kv(format!("retain of unallocated block {id}"))),
        }
    }

    /// Drops one holder; `true` when the block became free (its contents must be zeroed before reuse).
    pub fn release(&mut self, id: u32) -> Result<bool> {
        match self.refcounts.get_mut(id as usize) {
            Some(rc) if *rc > 0 => {
                *rc -= 1;
                if *rc == 0 {
                    self.free.push(id);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            _ => Err(Error::Kv(format!("release of unallocated block {id}"))),
        }
    }

    pub fn refcount(&self, id: u32) -> u32 {
        self.refcounts.get(id as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_until_empty_then_reuse() {
        let mut a = BlockAllocator::new(2);
        let x = a.allocate().unwrap();
        let y = a.allocate().unwrap();
        assert_ne!(x, y);
        assert!(a.allocate().is_none());
        assert!(a.release(x).unwrap());
        assert_eq!(a.allocate(), Some(x));
    }

    #[test]
    fn shared_block_frees_on_last_release() {
        let mut a = BlockAllocator::new(1);
        let x = a.allocate().unwrap();
        a.retain(x).unwrap();
        assert!(!a.release(x).unwrap());
        assert_eq!(a.num_free(), 0);
        assert!(a.release(x).unwrap());
        assert_eq!(a.num_free(), 1);
        assert!(a.release(x).is_err());
        assert!(a.retain(x).is_err());
    }
}
