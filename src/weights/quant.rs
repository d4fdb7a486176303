//! Block-quantized weight matrices as llama.cpp stores them (Q4_0 … Q8_0, Q2_K … Q6_K), held where they
//! lie: a range of a memory-mapped GGUF file (no copy), or bytes we own (rows reordered at load, or a
//! safetensors matrix quantized in place with `--quantize`). The block layouts and the reference
//! quantize / dequantize / dot routines are candle's `quantized::k_quants` (ports of ggml's); this module
//! only views bytes as those blocks, checking size and alignment first.

use std::sync::Arc;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0,
};
use candle_core::quantized::GgmlType;

use super::source::FileBytes;
pub use crate::device::QuantType;

/// Runs `$body` with `$B` bound to the candle block type of `$ty`.
#[macro_export]
macro_rules! with_block_type {
    ($ty:expr, $B:ident => $body:expr) => {{
        use candle_core::quantized::k_quants as kq;
        use $crate::weights::QuantType as Q;
        match $ty {
            Q::Q4_0 => {
                type $B = kq::BlockQ4_0;
                $body
            }
            Q::Q4_1 => {
                type $B = kq::BlockQ4_1;
                $body
            }
            Q::Q5_0 => {
                type $B = kq::BlockQ5_0;
                $body
            }
            Q::Q5_1 => {
                type $B = kq::BlockQ5_1;
                $body
            }
            Q::Q8_0 => {
                type $B = kq::BlockQ8_0;
                $body
            }
            Q::Q2_K => {
                type $B = kq::BlockQ2K;
                $body
            }
            Q::Q3_K => {
                type $B = kq::BlockQ3K;
                $body
            }
            Q::Q4_K => {
                type $B = kq::BlockQ4K;
                $body
            }
            Q::Q5_K => {
                type $B = kq::BlockQ5K;
                $body
            }
            Q::Q6_K => {
                type $B = kq::BlockQ6K;
                $body
            }
        }
    }};
}

/// Where the bytes are.
enum Storage {
    /// `len` bytes at `start` of a mapped file.
    Mapped {
        file: Arc<FileBytes>,
        start: usize,
        len: usize,
    },
    /// Owned, 8-byte aligned (every block type needs at most 4).
    Owned { words: Vec<u64>, len: usize },
    /// Owned in anonymous memory advised for transparent huge pages (large matrices: the quantized
    /// kernels stream them, and 4 KiB pages cost a TLB miss every 4 KiB).
    Anon { map: memmap2::MmapMut, len: usize },
    /// A range of an [`Arena`] chunk.
    Arena {
        chunk: Arc<ArenaChunk>,
        start: usize,
        len: usize,
    },
}

/// One huge-page-advised anonymous mapping of an [`Arena`]; its ranges are written once, when handed
/// out, and only read afterwards.
pub struct ArenaChunk {
    map: memmap2::MmapRaw,
}

impl ArenaChunk {
    fn bytes(&self, start: usize, len: usize) -> &[u8] {
        // SAFETY: `start..start + len` lies in the map (checked when the range was handed out) and was
        // fully written before any reader got it; nothing writes it afterwards.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(start), len) }
    }
}

/// Where a model's quantized matrices live after loading: big anonymous mappings advised for
/// transparent huge pages, matrices packed back to back (64-byte aligned). The experts of a MoE layer are
/// small matrices (a Q8_0 512 × 1,024 expert is 557 KB); each in its own allocation would sit on 4 KiB
/// pages and pay a TLB miss every 4 KiB of a stream, and each file-backed map is 4 KiB pages too.
pub struct Arena {
    current: Option<(Arc<ArenaChunk>, usize)>,
}

/// Chunks are at least this large (untouched pages of the last one are never resident).
const ARENA_CHUNK: usize = 256 << 20;

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

impl Arena {
    pub fn new() -> Self {
        Self { current: None }
    }

    /// `len` bytes filled by `fill`, as a storage range.
    fn alloc(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Option<Storage> {
        let fits = |c: &(Arc<ArenaChunk>, usize)| c.1 + len <= c.0.map.len();
        if !self.current.as_ref().is_some_and(fits) {
            let size = len.max(ARENA_CHUNK).next_multiple_of(2 << 20);
            let map = memmap2::MmapOptions::new().len(size).map_anon().ok()?;
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            let map = memmap2::MmapRaw::from(map);
            self.current = Some((Arc::new(ArenaChunk { map }), 0));
        }
        let (chunk, used) = self.current.as_mut()?;
        let start = *used;
        // SAFETY: `start..start + len` is inside the map (checked by `fits` or the fresh chunk's size)
        // and no other reference to it exists yet: every range is handed out once.
        let dst = unsafe { std::slice::from_raw_parts_mut(chunk.map.as_mut_ptr().add(start), len) };
        fill(dst);
        *used = (start + len).next_multiple_of(64);
        Some(Storage::Arena {
            chunk: chunk.clone(),
            start,
            len,
        })
    }
}

/// A `[rows, cols]` block-quantized matrix, each row a whole number of blocks: row-major, or (Q8_0 with
/// a multiple of four rows, once [`QuantMatrix::into_kernel_layout`] ran) four rows interleaved per
/// block for the Q8_0 kernel (`model::cpu::q8_0`).
pub struct QuantMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    storage: Storage,
    interleaved: bool,
    /// Q4_K in the eight-row GEMM layout (`model::cpu::q4k_x8`).
    x8: bool,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix({} {}x{})",
            self.ty.name(),
            self.rows,
            self.cols
        )
    }
}

/// Why bytes cannot be viewed as a quantized matrix.
pub fn layout_error(ty: QuantType, rows: usize, cols: usize, len: usize) -> Option<String> {
    match ty.row_bytes(cols) {
        None => Some(format!(
            "{} rows of {cols} elements are not whole blocks of {}",
            ty.name(),
            ty.block_elems()
        )),
        Some(rb) if rb.checked_mul(rows) != Some(len) => Some(format!(
            "{} [{rows}, {cols}] needs {} bytes, found {len}",
            ty.name(),
            rb.saturating_mul(rows)
        )),
        Some(_) => None,
    }
}

const QK_K_ELEMS: usize = 256;

/// Matrices from this size on are held in huge-page-advised anonymous memory.
const HUGE_PAGE_MIN: usize = 1 << 20;

fn owned(bytes: &[u8]) -> Storage {
    if bytes.len() >= HUGE_PAGE_MIN {
        if let Ok(mut map) = memmap2::MmapMut::map_anon(bytes.len()) {
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            map.copy_from_slice(bytes);
            return Storage::Anon {
                map,
                len: bytes.len(),
            };
        }
    }
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: `words` holds at least `bytes.len()` bytes; u64 has no invalid bit patterns.
    let dst =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), bytes.len()) };
    dst.copy_from_slice(bytes);
    Storage::Owned {
        words,
        len: bytes.len(),
    }
}

impl QuantMatrix {
    /// A view of `len` bytes at `start` of a mapped file (copied once if the range is misaligned for
    /// the block type). The caller has checked the layout with [`layout_error`].
    pub fn mapped(
        ty: QuantType,
        rows: usize,
        cols: usize,
        file: Arc<FileBytes>,
        start: usize,
    ) -> Result<Self, String> {
        let len = ty.row_bytes(cols).unwrap_or(0) * rows;
        if let Some(e) = layout_error(ty, rows, cols, len) {
            return Err(e);
        }
        let end = start.checked_add(len).filter(|&e| e <= file.len());
        let Some(end) = end else {
            return Err(format!(
                "data runs past the end of the file ({len} bytes at {start})"
            ));
        };
        let storage = if (file.as_ptr() as usize + start).is_multiple_of(4) {
            Storage::Mapped { file, start, len }
        } else {
            owned(&file[start..end])
        };
        Ok(Self {
            ty,
            rows,
            cols,
            storage,
            interleaved: false,
            x8: false,
        })
    }

    /// Owns a copy of `bytes` (row-major rows of whole blocks).
    pub fn from_bytes(
        ty: QuantType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, String> {
        if let Some(e) = layout_error(ty, rows, cols, bytes.len()) {
            return Err(e);
        }
        Ok(Self {
            ty,
            rows,
            cols,
            storage: owned(bytes),
            interleaved: false,
            x8: false,
        })
    }

    /// The layout the kernels read fastest, in memory of our own (huge-page advised): Q8_0 with a
    /// multiple of four rows interleaved four rows per block; every type copied out of a mapped file,
    /// whose pages are then dropped from the resident set (the file is held once, in the copy).
    pub fn into_kernel_layout(self) -> Self {
        self.into_kernel_layout_in(None)
    }

    /// [`QuantMatrix::into_kernel_layout`], placed in `arena` when given (the store's loads).
    pub fn into_kernel_layout_in(self, arena: Option<&mut Arena>) -> Self {
        let plain = !self.interleaved && !self.x8;
        // The K-quant layouts only where their kernels run (x86 with AVX2); Q8_0's has a portable path.
        let k_kernels =
            crate::model::cpu::kquants::serves(self.ty, crate::model::cpu::q8_0::kernel());
        let x8 = plain && k_kernels && self.ty == QuantType::Q4_K && self.rows.is_multiple_of(8);
        let interleave = plain
            && !x8
            && (self.ty == QuantType::Q8_0 || k_kernels)
            && self.rows.is_multiple_of(4);
        let in_arena = matches!(self.storage, Storage::Arena { .. });
        if !interleave
            && !x8
            && (in_arena || (arena.is_none() && !matches!(self.storage, Storage::Mapped { .. })))
        {
            return self;
        }
        let nb = self.cols / self.ty.block_elems();
        let (ty, rows, data) = (self.ty, self.rows, self.data());
        let len = if x8 {
            rows * nb * crate::model::cpu::q4k_x8::ROW_BLOCK_BYTES
        } else {
            data.len()
        };
        let mapped = match &self.storage {
            Storage::Mapped { file, start, .. } => Some((file.clone(), *start)),
            _ => None,
        };
        let (src_rb, dst_rb) = (self.row_bytes(), len / rows.max(1));
        // In chunks of 64 rows (whole groups of every layout), each chunk's file pages dropped as soon
        // as it is copied: the matrix is never resident twice (the load's peak stays near the file).
        let fill = |dst: &mut [u8]| {
            const CHUNK: usize = 64;
            for r0 in (0..rows).step_by(CHUNK) {
                let n = CHUNK.min(rows - r0);
                let src = &data[r0 * src_rb..(r0 + n) * src_rb];
                let out = &mut dst[r0 * dst_rb..(r0 + n) * dst_rb];
                if x8 {
                    crate::model::cpu::q4k_x8::relayout(src, n, nb, out);
                } else if interleave && ty == QuantType::Q8_0 {
                    crate::model::cpu::q8_0::interleave4_into(src, n, nb, out);
                } else if interleave {
                    interleave_blocks_into(src, n, nb, ty.block_bytes(), out);
                } else {
                    out.copy_from_slice(src);
                }
                if let Some((file, start)) = &mapped {
                    file.release(start + r0 * src_rb, start + (r0 + n) * src_rb);
                }
            }
        };
        let placed = arena.and_then(|a| a.alloc(len, fill));
        let storage = match placed {
            Some(s) => s,
            None => {
                let mut bytes = vec![0u8; len];
                fill(&mut bytes);
                owned(&bytes)
            }
        };
        if let Storage::Mapped { file, start, len } = &self.storage {
            file.release(*start, start + len);
        }
        Self {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            storage,
            interleaved: self.interleaved || interleave,
            x8: self.x8 || x8,
        }
    }

    /// Whether this is Q4_K in the eight-row GEMM layout (see [`QuantMatrix::into_kernel_layout`]).
    pub fn x8(&self) -> bool {
        self.x8
    }

    /// Bytes per row as held (the eight-row layout holds 148 per block instead of 144).
    pub fn stored_row_bytes(&self) -> usize {
        if self.x8 {
            self.cols / QK_K_ELEMS * crate::model::cpu::q4k_x8::ROW_BLOCK_BYTES
        } else {
            self.row_bytes()
        }
    }

    /// Whether rows are interleaved four per block (see [`QuantMatrix::into_kernel_layout`]).
    pub fn interleaved(&self) -> bool {
        self.interleaved
    }

    /// Row `r` in the plain block layout.
    pub fn plain_row(&self, r: usize) -> Vec<u8> {
        let rb = self.row_bytes();
        let nb = self.cols / self.ty.block_elems();
        if self.x8 {
            crate::model::cpu::q4k_x8::plain_row(self.data(), r, nb)
        } else if self.interleaved && self.ty == QuantType::Q8_0 {
            crate::model::cpu::q8_0::deinterleave_row(self.data(), r, nb)
        } else if self.interleaved {
            let bb = self.ty.block_bytes();
            let (g, j) = (r / 4, r % 4);
            (0..nb)
                .flat_map(|b| &self.data()[((g * nb + b) * 4 + j) * bb..][..bb])
                .copied()
                .collect()
        } else {
            self.data()[r * rb..(r + 1) * rb].to_vec()
        }
    }

    /// Quantizes `[rows, cols]` f32 values row by row with ggml's reference quantizer for `ty`.
    pub fn quantize(
        ty: QuantType,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self, String> {
        let row_bytes = ty
            .row_bytes(cols)
            .ok_or_else(|| layout_error(ty, rows, cols, 0).unwrap_or_default())?;
        if values.len() != rows * cols {
            return Err(format!("{} values for [{rows}, {cols}]", values.len()));
        }
        let mut bytes = vec![0u8; rows * row_bytes];
        use rayon::prelude::*;
        let rows_iter = values
            .par_chunks(cols.max(1))
            .zip(bytes.par_chunks_mut(row_bytes.max(1)));
        if ty == QuantType::Q4_K {
            // ggml's current reference quantizer (candle's port follows an older one).
            rows_iter.for_each(|(src, dst)| super::quantize::quantize_row_q4_k(src, dst));
        } else {
            with_block_type!(ty, B => {
                rows_iter.for_each(|(src, dst)| {
                    let mut blocks = vec![B::zeros(); cols / B::BLCK_SIZE];
                    B::from_float(src, &mut blocks);
                    // SAFETY: the blocks are plain `repr(C)` data of `row_bytes` bytes in all.
                    let raw = unsafe {
                        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), row_bytes)
                    };
                    dst.copy_from_slice(raw);
                });
            });
        }
        Self::from_bytes(ty, rows, cols, &bytes)
    }

    pub fn ty(&self) -> QuantType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All bytes, row-major.
    pub fn data(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped { file, start, len } => &file[*start..*start + *len],
            Storage::Owned { words, len } => {
                // SAFETY: `words` holds at least `len` initialised bytes.
                unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), *len) }
            }
            Storage::Anon { map, len } => &map[..*len],
            Storage::Arena { chunk, start, len } => chunk.bytes(*start, *len),
        }
    }

    /// Bytes held (for memory accounting).
    pub fn byte_len(&self) -> usize {
        self.data().len()
    }

    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols).unwrap_or(0)
    }

    /// The rows `start..start + n` as their own matrix (sharing a mapped file; a stacked expert tensor
    /// is one matrix per expert this way).
    pub fn slice_rows(&self, start: usize, n: usize) -> Result<Self, String> {
        if start + n > self.rows {
            return Err(format!("rows {start}..{} of {}", start + n, self.rows));
        }
        let rb = self.row_bytes();
        if self.interleaved || self.x8 {
            let bytes: Vec<u8> = (start..start + n).flat_map(|r| self.plain_row(r)).collect();
            return Self::from_bytes(self.ty, n, self.cols, &bytes);
        }
        let storage = match &self.storage {
            Storage::Mapped { file, start: s, .. } => Storage::Mapped {
                file: file.clone(),
                start: s + start * rb,
                len: n * rb,
            },
            Storage::Owned { .. } | Storage::Anon { .. } | Storage::Arena { .. } => {
                owned(&self.data()[start * rb..(start + n) * rb])
            }
        };
        Ok(Self {
            ty: self.ty,
            rows: n,
            cols: self.cols,
            storage,
            interleaved: false,
            x8: false,
        })
    }

    /// A copy with rows in the order `order` (each an index into `self`).
    pub fn select_rows(&self, order: &[usize]) -> Result<Self, String> {
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(order.len() * rb);
        for &r in order {
            if r >= self.rows {
                return Err(format!("row {r} of {}", self.rows));
            }
            bytes.extend_from_slice(&self.plain_row(r));
        }
        Self::from_bytes(self.ty, order.len(), self.cols, &bytes)
    }

    /// Dequantizes rows `start..start + out.len() / cols` into `out`.
    pub fn dequantize_rows(&self, start: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let n = out.len() / self.cols.max(1);
        if self.interleaved || self.x8 {
            for (i, row) in out.chunks_mut(self.cols.max(1)).enumerate() {
                let bytes = self.plain_row(start + i);
                let fresh = owned_words(&bytes);
                with_block_type!(self.ty, B => {
                    B::to_float(blocks::<B>(&words_bytes(&fresh)[..bytes.len()]), row);
                });
            }
            return;
        }
        let data = &self.data()[start * rb..(start + n) * rb];
        with_block_type!(self.ty, B => {
            B::to_float(blocks::<B>(data), out);
        });
    }

    /// The whole matrix in f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(0, &mut out);
        out
    }
}

/// Rows `4g..4g+4` interleaved block by block: `[row 4g block b][row 4g+1 block b]…` (the K-quant
/// kernels then read one sequential stream).
fn interleave_blocks_into(bytes: &[u8], rows: usize, nb: usize, block: usize, out: &mut [u8]) {
    let rb = nb * block;
    let mut at = 0;
    for g in 0..rows / 4 {
        for b in 0..nb {
            for j in 0..4 {
                out[at..at + block]
                    .copy_from_slice(&bytes[(4 * g + j) * rb + b * block..][..block]);
                at += block;
            }
        }
    }
}

/// `bytes` copied into 8-byte aligned words.
fn owned_words(bytes: &[u8]) -> Vec<u64> {
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    words_bytes_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
    words
}

fn words_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: any u64 slice is a valid byte slice of 8× the length.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) }
}

fn words_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above; u8 has no invalid bit patterns.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

/// Views bytes as blocks of `B`. Panics only on a broken internal invariant (every `QuantMatrix` is
/// checked for whole blocks and 4-byte alignment when made).
pub fn blocks<B: GgmlType>(bytes: &[u8]) -> &[B] {
    let size = std::mem::size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size)
            && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>()),
        "quantized bytes are whole, aligned blocks"
    );
    // SAFETY: length and alignment checked above; the block types are `repr(C)` structs of integers
    // and f16 values, valid for any bit pattern.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) }
}

/// Block sizes as the types declare them (a test checks they equal llama.cpp's).
pub const fn block_sizes() -> [(usize, usize); 10] {
    [
        (32, std::mem::size_of::<BlockQ4_0>()),
        (32, std::mem::size_of::<BlockQ4_1>()),
        (32, std::mem::size_of::<BlockQ5_0>()),
        (32, std::mem::size_of::<BlockQ5_1>()),
        (32, std::mem::size_of::<BlockQ8_0>()),
        (256, std::mem::size_of::<BlockQ2K>()),
        (256, std::mem::size_of::<BlockQ3K>()),
        (256, std::mem::size_of::<BlockQ4K>()),
        (256, std::mem::size_of::<BlockQ5K>()),
        (256, std::mem::size_of::<BlockQ6K>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_layouts_are_llama_cpps() {
        // ggml's type_traits: block sizes and bytes.
        let expected = [
            (32, 18),
            (32, 20),
            (32, 22),
            (32, 24),
            (32, 34),
            (256, 84),
            (256, 110),
            (256, 144),
            (256, 176),
            (256, 210),
        ];
        assert_eq!(block_sizes(), expected);
        for (ty, (elems, bytes)) in QuantType::ALL.into_iter().zip(expected) {
            assert_eq!(
                (ty.block_elems(), ty.block_bytes()),
                (elems, bytes),
                "{ty:?}"
            );
            assert!(std::mem::align_of::<BlockQ6K>() <= 4);
        }
    }

    #[test]
    fn quantize_dequantize_round_trip_is_close_and_rows_slice() {
        let (rows, cols) = (3, 256);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        for ty in QuantType::ALL {
            let q = QuantMatrix::quantize(ty, rows, cols, &values).expect("quantizes");
            assert_eq!(q.byte_len(), rows * ty.row_bytes(cols).unwrap_or(0));
            let back = q.dequantize();
            let max_err = back
                .iter()
                .zip(&values)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Values span [-2, 2]: half a step of each type's grid, plus the scale's own rounding.
            let bound = match ty {
                QuantType::Q8_0 => 0.02,
                QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q5_K | QuantType::Q6_K => 0.13,
                QuantType::Q3_K => 0.5,
                QuantType::Q2_K => 0.7,
                _ => 0.26,
            };
            assert!(max_err < bound, "{ty:?}: {max_err}");
            let last = q.slice_rows(2, 1).expect("slice");
            let mut row = vec![0f32; cols];
            last.dequantize_rows(0, &mut row);
            assert_eq!(row, back[2 * cols..]);
            let swapped = q.select_rows(&[2, 0]).expect("select");
            assert_eq!(swapped.dequantize()[..cols], back[2 * cols..]);
            let four = QuantMatrix::quantize(ty, 4, cols, &values[..cols].repeat(4))
                .expect("quantize")
                .into_kernel_layout();
            assert_eq!(
                four.interleaved(),
                matches!(ty, QuantType::Q8_0 | QuantType::Q4_K | QuantType::Q6_K)
            );
            assert_eq!(
                four.dequantize(),
                back[..cols].repeat(4),
                "{ty:?} kernel layout"
            );
            assert_eq!(
                four.slice_rows(3, 1).expect("slice").dequantize(),
                back[..cols]
            );
        }
        assert!(QuantMatrix::quantize(QuantType::Q4_K, 1, 32, &[0.0; 32]).is_err());
    }
}
