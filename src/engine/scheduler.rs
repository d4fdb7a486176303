//! Scheduling policy: which sequences run in the next step and with how many tokens. Every running sequence
//! that is decoding gets its one token first, then prompts are prefilled in chunks while the token budget
//! lasts, then waiting sequences are admitted up to the running limit. When KV blocks run out, the most
//! recently admitted sequence is preempted (its blocks freed, recomputed later) instead of failing.

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Maximum sequences running at once.
    pub max_running: usize,
    /// Maximum tokens in one forward pass (decodes + prefill chunks).
    pub max_batch_tokens: usize,
    /// Requests allowed to wait for admission; more are refused.
    pub max_waiting: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_running: 64,
            max_batch_tokens: 2048,
            max_waiting: 256,
            block_size: 16,
            num_blocks: 4096,
        }
    }
}

/// Tokens a sequence may run this step given what is left of the budget.
pub fn chunk_for(uncached: usize, budget_left: usize) -> usize {
    uncached.min(budget_left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_budget() {
        assert_eq!(chunk_for(1, 10), 1);
        assert_eq!(chunk_for(100, 10), 10);
        assert_eq!(chunk_for(5, 0), 0);
    }
}
