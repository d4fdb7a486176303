//! The shape of one layer's cache entry per token, as the cache allocates it (the model's spec chooses it:
//! `ModelSpec::kv_layout`).

/// Keys `(heads, dim)` and, unless the cache holds a latent (MLA), values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub k: (usize, usize),
    pub v: Option<(usize, usize)>,
}

impl KvLayout {
    pub fn values_per_token(&self) -> usize {
        self.k.0 * self.k.1 + self.v.map_or(0, |(h, d)| h * d)
    }
}
