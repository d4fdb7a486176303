//! CPU kernels, by job: `elem` (the weight elements read as stored), `simd` (the x86 tiles and dot
//! products that widen them in registers), `matmul` (few-row products `x · Wᵀ` with f32 activations and f32 / bf16 / f16
//! weights widened in registers, and the panel-widening path for many rows), `dpbf16` and `tile512` (the
//! AVX-512 kernels for bf16 and f32 weights from two rows on), `experts` (the routed
//! experts of a decode-sized batch in two parallel passes), `attention` (paged attention read in place
//! from the cache, AVX2 tiles). The CUDA counterparts live in `src/cuda/`.

pub mod attention;
pub mod dpbf16;
pub(crate) mod elem;
pub(crate) mod experts;
pub mod fp8;
pub(crate) mod host;
pub(crate) mod kquants;
pub mod matmul;
pub(crate) mod q4k_x8;
pub mod q8_0;
pub mod quant;
pub(crate) mod simd;
#[cfg(test)]
pub(crate) mod test_values;
pub(crate) mod tile512;
pub mod widen;
