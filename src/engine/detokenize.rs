//! Incremental detokenization: text deltas as tokens arrive, never splitting a multi-byte UTF-8 character
//! (a delta ending in U+FFFD waits for the next token), with the offsets vLLM and TGI use so that
//! tokenizers which merge across tokens (byte-level BPE, sentencepiece spaces) decode right.

use crate::error::Result;
use crate::tokenizer::TextTokenizer;

#[derive(Debug, Clone)]
pub(crate) struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// Special tokens decode to nothing (the default); kept when the output is parsed for markers
    /// that are special tokens (tool calls, reasoning) or the client asked for them.
    skip_special: bool,
}

impl Default for IncrementalDecoder {
    fn default() -> Self {
        Self::new(true)
    }
}

impl IncrementalDecoder {
    pub(crate) fn new(skip_special: bool) -> Self {
        Self {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special,
        }
    }

    /// Adds a token; returns the new text it completes (possibly empty).
    pub(crate) fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let delta = full[prefix.len()..].to_owned();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the very end), decoded lossily.
    pub(crate) fn flush(&mut self, tok: &TextTokenizer) -> Result<String> {
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
            Ok(full[prefix.len()..].to_owned())
        } else {
            Ok(String::new())
        }
    }
}
