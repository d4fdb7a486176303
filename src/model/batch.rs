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

    /// Whether every sequence decodes one token (no prompt in the step).
    pub fn is_decode_only(&self) -> bool {
        self.seqs.iter().all(|s| s.query_len == 1)
    }

    /// Pads a decode-only batch to `rows` sequences, for a step captured at that size: each pad row is
    /// token 0 at position 0, writes its key/value to `pad_slot` (on a GPU [`crate::cuda::PAD_SLOT`],
    /// which writes nothing) and sees one context slot, the first sequence's first (read, never written;
    /// any finite cache row serves). Rows are independent through every layer, so the real rows' logits
    /// do not change; the pad rows' are dropped.
    pub fn pad_decode(&mut self, rows: usize, pad_slot: u32) -> Result<()> {
        let Some(seen) = self
            .seqs
            .first()
            .and_then(|s| s.context_slots.first())
            .copied()
        else {
            return Err(Error::Batch("padding an empty batch".into()));
        };
        if !self.is_decode_only() || rows < self.seqs.len() {
            return Err(Error::Batch(format!(
                "padding {} sequences (decode only: {}) to {rows}",
                self.seqs.len(),
                self.is_decode_only()
            )));
        }
        for _ in self.seqs.len()..rows {
            self.seqs.push(SeqSlice {
                query_start: self.tokens.len(),
                query_len: 1,
                context_len: 1,
                context_slots: vec![seen],
            });
            self.tokens.push(0);
            self.positions.push(0);
            self.slot_mapping.push(pad_slot);
        }
        Ok(())
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
