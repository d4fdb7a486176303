//! A flat token batch: the tokens of all scheduled sequences back to back, with positions, cache slots and,
//! per sequence, its query range, context length and block table. One batch can mix a prompt being prefilled
//! (many query tokens) with sequences decoding one token each.

use crate::error::{Error, Result};
use crate::kv::BlockTable;

/// One sequence's part of a batch.
#[derive(Debug, Clone)]
pub struct SeqSlice {
    /// Index of its first query token in the flat batch.
    pub query_start: usize,
    pub query_len: usize,
    /// Tokens in the cache once this step's tokens are written (cached + query).
    pub context_len: usize,
    /// Cache slots of positions `0..context_len`.
    pub context_slots: Vec<u32>,
}

/// Input of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    /// Cache slot each query token's key/value is written to.
    pub slot_mapping: Vec<u32>,
    pub seqs: Vec<SeqSlice>,
}

impl Batch {
    /// Adds a sequence: `tokens` continue after `cached` tokens already in its cache. The block table must
    /// already hold `cached + tokens.len()` positions.
    pub fn push(
        &mut self,
        tokens: &[u32],
        cached: usize,
        table: &BlockTable,
        block_size: usize,
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Batch(
                "a sequence needs at least one query token".into(),
            ));
        }
        let context_len = cached + tokens.len();
        if table.capacity(block_size) < context_len {
            return Err(Error::Batch(format!(
                "block table holds {} positions, {context_len} needed",
                table.capacity(block_size)
            )));
        }
        let context_slots = (0..context_len)
            .map(|p| table.slot(p, block_size))
            .collect::<Result<Vec<_>>>()?;
        self.seqs.push(SeqSlice {
            query_start: self.tokens.len(),
            query_len: tokens.len(),
            context_len,
            context_slots: context_slots.clone(),
        });
        self.tokens.extend_from_slice(tokens);
        self.positions
            .extend((cached..context_len).map(|p| p as u32));
        self.slot_mapping
            .extend_from_slice(&context_slots[cached..]);
        Ok(())
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Flat index of each sequence's last token.
    pub fn last_token_indices(&self) -> Vec<u32> {
        self.seqs
            .iter()
            .map(|s| (s.query_start + s.query_len - 1) as u32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::BlockAllocator;

    #[test]
    fn mixed_prefill_and_decode() {
        let mut alloc = BlockAllocator::new(8);
        let (mut a, mut b) = (BlockTable::new(), BlockTable::new());
        a.reserve(5, 4, &mut alloc).unwrap();
        b.reserve(3, 4, &mut alloc).unwrap();
        let mut batch = Batch::default();
        batch.push(&[1, 2, 3, 4, 5], 0, &a, 4).unwrap();
        batch.push(&[9], 2, &b, 4).unwrap();
        assert_eq!(batch.positions, vec![0, 1, 2, 3, 4, 2]);
        assert_eq!(batch.slot_mapping, vec![0, 1, 2, 3, 4, 10]);
        assert_eq!(batch.last_token_indices(), vec![4, 5]);
        assert_eq!(batch.seqs[1].context_slots, vec![8, 9, 10]);
        assert!(
            batch.push(&[1, 2], 3, &b, 4).is_err(),
            "beyond the block table"
        );
        assert!(batch.push(&[], 0, &b, 4).is_err());
    }
}
