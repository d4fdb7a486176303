//! Constrained decoding as the engine sees it: something that says which tokens may come next and is told
//! which one came. The grammar engine (structured outputs, tool calls) implements it; the engine knows
//! nothing of grammars. Masks are computed while the model runs (see `EngineCore::step`); each mask's
//! work is bounded by the implementation, never by what the client sent.

/// Which tokens may come next, as a bit set over the vocabulary: token `t` is allowed when bit `t % 32`
/// of word `t / 32` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenMask(pub Vec<u32>);

impl TokenMask {
    pub fn allows(&self, token: usize) -> bool {
        self.0
            .get(token / 32)
            .is_some_and(|w| w >> (token % 32) & 1 == 1)
    }

    /// Sets every disallowed logit to −∞.
    pub fn apply(&self, logits: &mut [f32]) {
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = self.0.get(w).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits >> b & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// Why a constraint could not go on: a fixed description (static text, so it can never carry request
/// content into a log).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConstraintError(pub &'static str);

pub trait TokenConstraint: Send {
    /// The tokens allowed next (end-of-sequence tokens when the constraint is complete).
    fn mask(&mut self) -> Result<TokenMask, ConstraintError>;
    /// `token` was chosen.
    fn accept(&mut self, token: u32) -> Result<(), ConstraintError>;
    /// Nothing more can follow: the output is complete.
    fn is_finished(&self) -> bool;
    /// An independent copy in the same state (another choice of the same request).
    fn fork(&self) -> Box<dyn TokenConstraint>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_allowed_logits_only() {
        let mut m = vec![0u32; 2];
        m[0] |= 1 << 3;
        m[1] |= 1 << 1; // token 33
        let mask = TokenMask(m);
        assert!(mask.allows(3) && mask.allows(33) && !mask.allows(4) && !mask.allows(99));
        let mut logits = vec![1.0f32; 40];
        mask.apply(&mut logits);
        let kept: Vec<usize> = (0..40).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, [3, 33]);
    }
}
