//! The compute pool the engine's steps run on. A step makes dozens of small fork-joins (projections,
//! attention rows, experts, norms, sampling); called from a thread outside the rayon pool each one is a
//! cross-thread injection and a sleep/wake round trip, and the caller competes with the pool's workers for
//! the cores. Running the engine loop itself on a pool worker turns them into local deque pushes that the
//! other workers steal (`benches/decode_step`, dev-2c: 395 → 121 µs per batch-1 step of the default model).

use crate::error::{Error, Result};

/// A pool of the configured compute threads (`RAYON_NUM_THREADS`, which `--threads` sets; otherwise one per
/// logical CPU). Dedicated to one engine: nothing else queues work on it, so the engine loop may block on
/// its queue without starving another rayon user.
pub fn compute_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("moeserve-compute-{i}"))
        .build()
        .map_err(|e| Error::Device(format!("cannot start the compute threads: {e}")))
}

/// Runs `f` on a worker of a fresh [`compute_pool`], so every parallel section inside it runs there.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    Ok(compute_pool()?.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_a_pool_worker_and_its_fork_joins_stay_there() {
        assert!(rayon::current_thread_index().is_none());
        let (outer, inner) = on_compute_pool(|| {
            let outer = rayon::current_thread_index();
            let (a, b) = rayon::join(rayon::current_thread_index, rayon::current_thread_index);
            (outer, a.is_some() && b.is_some())
        })
        .unwrap();
        assert!(outer.is_some(), "the closure ran outside the pool");
        assert!(inner, "a fork-join left the pool");
    }
}
