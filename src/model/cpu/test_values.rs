//! Deterministic pseudo-random test inputs for the CPU kernels' tests (uniform in [-0.5, 0.5)).

/// `len` values from `seed` (a 64-bit LCG's high bits).
pub(crate) fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}
