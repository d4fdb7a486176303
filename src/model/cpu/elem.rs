//! The weight elements the CPU kernels read as stored and widen to f32 in registers — f32, bf16, f16 and
//! e4m3 FP8 ([`E4m3`]) — with the scalar widening every kernel's tail uses and a portable dot product the
//! compiler vectorises. A leaf: the SIMD kernels (`simd`) and the matmul drivers build on it.

use half::{bf16, f16};

/// A weight element that widens to f32 exactly.
pub trait Widen: Copy + Send + Sync {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

impl Widen for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// An e4m3 FP8 weight byte, widened to its value ÷ 256: its exponent and mantissa bits placed in an f16
/// (bias 15 instead of 7) give exactly that, normals and subnormals alike, in one conversion instruction.
/// The FP8 kernel (`super::fp8`) folds the 256 into the block scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct E4m3(pub u8);

impl E4m3 {
    #[inline(always)]
    fn f16_bits(self) -> u16 {
        (u16::from(self.0 & 0x80) << 8) | (u16::from(self.0 & 0x7F) << 7)
    }
}

impl Widen for E4m3 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f16::from_bits(self.f16_bits()).to_f32()
    }
}

/// Lane-wise accumulation (16 independent sums) that the compiler can vectorise without reassociating.
#[inline(always)]
pub(crate) fn dot_lanes<W: Widen>(x: &[f32], w: &[W]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let xc = x.chunks_exact(LANES);
    let wc = w.chunks_exact(LANES);
    let (xt, wt) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        for l in 0..LANES {
            acc[l] += xs[l] * ws[l].widen();
        }
    }
    let mut tail = 0f32;
    for (a, b) in xt.iter().zip(wt) {
        tail += a * b.widen();
    }
    // Pairwise: lane-wise halving adds vectorise; a sequential sum would be 16 dependent additions.
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            acc[l] += acc[l + half];
        }
        half /= 2;
    }
    acc[0] + tail
}
