//! One engine step as glue between the three rooms, owned by the engine thread: the [`Scheduler`] decides
//! the work (model-free), the [`ModelRunner`] runs it over the KV cache it owns and samples, the
//! [`OutputProcessor`] turns tokens into text and events. Finished sequences leave all three; their freed
//! blocks are zeroed before reuse.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::output::{Advance, OutputProcessor};
use super::request::{EngineRequest, FinishReason};
use super::runner::{ModelRunner, StepInput};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::sequence::{SeqId, Sequence};
use super::stats::EngineStats;
use crate::error::Result;
use crate::kv::KvCache;
use crate::loader::LoadedModel;

/// Counters the model keeps on a GPU (routed tokens per expert) are read back every this many steps
/// (one small copy; never per layer).
const EXPERT_LOAD_FLUSH_STEPS: u64 = 64;

pub struct EngineCore {
    sched: Scheduler,
    runner: ModelRunner,
    output: OutputProcessor,
    stats: Arc<EngineStats>,
}

impl EngineCore {
    pub fn new(
        loaded: Arc<LoadedModel>,
        config: SchedulerConfig,
        stats: Arc<EngineStats>,
    ) -> Result<Self> {
        let runner = ModelRunner::new(loaded.clone(), config.num_blocks, config.block_size)?;
        stats
            .kv_blocks_total
            .store(config.num_blocks, Ordering::Relaxed);
        stats
            .kv_blocks_free
            .store(config.num_blocks, Ordering::Relaxed);
        Ok(Self {
            sched: Scheduler::new(config),
            runner,
            output: OutputProcessor::new(loaded),
            stats,
        })
    }

    /// Brings counters the model keeps on its device (per-expert routed tokens) up to date; called every
    /// [`EXPERT_LOAD_FLUSH_STEPS`] steps and when the engine goes idle.
    pub fn flush_counters(&self) {
        self.runner.flush_counters();
    }

    pub fn has_work(&self) -> bool {
        self.sched.has_work()
    }

    /// Called when the engine goes idle: device counters flushed, the last step's buffers zeroed.
    pub fn went_idle(&self) {
        self.runner.flush_counters();
        self.runner.forget_step_inputs();
    }

    pub fn kv(&self) -> &KvCache {
        self.runner.kv()
    }

    pub fn free_blocks(&self) -> usize {
        self.sched.free_blocks()
    }

    /// Queues a request (its first choice; the others fork from it after prefill).
    pub fn add(&mut self, req: EngineRequest) {
        let id = self.sched.next_id();
        let seq = Sequence::new(id, req.id, req.prompt, req.params).with_prefix(req.prefix);
        self.runner
            .add(id, &seq.params, &seq.tokens, req.constraint);
        self.output.add(&seq, req.events);
        self.stats.queued_requests.fetch_sub(1, Ordering::Relaxed);
        self.sched.add(seq);
        self.publish();
    }

    /// Cancels every choice of a request and frees its blocks.
    pub fn cancel(&mut self, request_id: u64) {
        for id in self.sched.of_request(request_id) {
            self.finish(id, FinishReason::Abort, String::new());
        }
        self.publish();
    }

    /// Fails the request `id` belongs to (every choice), with a message that names no content.
    fn fail_request(&mut self, id: SeqId, message: &str) {
        let Some(rid) = self.sched.get(id).map(|s| s.request_id) else {
            return;
        };
        self.output.fail(id, message);
        self.cancel(rid);
    }

    /// Fails every sequence (after an internal error), telling each client.
    pub fn fail_all(&mut self, message: &str) {
        for id in self.sched.ids() {
            self.output.fail(id, message);
        }
        self.abort_all();
    }

    /// Aborts everything and empties the prefix cache (shutdown), zeroing what it held.
    pub fn abort_all(&mut self) {
        for id in self.sched.ids() {
            self.finish(id, FinishReason::Abort, String::new());
        }
        let freed = self.sched.clear_prefix_cache();
        self.runner.zero(&freed);
        self.publish();
    }

    /// When the next cached prefix block expires.
    pub fn next_expiry(&self) -> Option<std::time::Instant> {
        self.sched.next_expiry()
    }

    /// Drops (and zeroes) the cached prefix blocks whose time is up.
    pub fn expire(&mut self) {
        let freed = self.sched.expire();
        self.runner.zero(&freed);
        self.publish();
    }

    fn publish(&self) {
        let s = &self.stats;
        s.waiting_sequences
            .store(self.sched.waiting(), Ordering::Relaxed);
        s.running_sequences
            .store(self.sched.running(), Ordering::Relaxed);
        s.kv_blocks_free
            .store(self.sched.free_blocks(), Ordering::Relaxed);
        if let Some((blocks, c)) = self.sched.prefix_stats() {
            s.prefix_cached_blocks.store(blocks, Ordering::Relaxed);
            s.prefix_queried_tokens
                .store(c.queried_tokens, Ordering::Relaxed);
            s.prefix_hit_tokens.store(c.hit_tokens, Ordering::Relaxed);
            s.prefix_evictions.store(c.evictions, Ordering::Relaxed);
            s.prefix_expirations.store(c.expirations, Ordering::Relaxed);
        }
    }

    /// Removes a sequence from all three rooms, zeroes its freed blocks, and tells the client.
    fn finish(&mut self, id: SeqId, reason: FinishReason, text: String) {
        let Some((seq, freed)) = self.sched.remove(id) else {
            return;
        };
        self.runner.zero(&freed);
        self.runner.remove(id);
        // Published before the client hears of the finish, so observers never see stale counts.
        self.publish();
        self.output.finished(&seq, reason, text);
    }

    /// Runs one step. Returns the number of tokens processed (0 when idle).
    pub fn step(&mut self) -> Result<usize> {
        let plan = self.sched.schedule();
        self.runner.zero(&plan.freed);
        // Cached partly filled blocks into the blocks of the sequences adopting them, before the forward
        // pass reads them; then the sources go back (zeroed if nothing holds them any more).
        let copied = self.runner.copy_blocks(&plan.copies);
        let freed = self.sched.release_held(&plan.held);
        self.runner.zero(&freed);
        copied?;
        self.stats
            .preemptions
            .fetch_add(plan.preempted as u64, Ordering::Relaxed);
        for id in plan.unfit {
            self.finish(id, FinishReason::Length, String::new());
        }
        self.publish();
        if plan.work.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        // Who samples this step: sequences reaching their last token, and the choices forked from a
        // prompt that completes now (they share its last row).
        let mut samplers: Vec<(SeqId, SeqId)> = Vec::new();
        let mut copies = Vec::new();
        let mut prompt_only = Vec::new();
        for &(id, chunk) in &plan.work {
            let Some(seq) = self.sched.get(id) else {
                continue;
            };
            if seq.cached + chunk != seq.tokens.len() {
                continue;
            }
            if seq.params.max_tokens == 0 {
                // Only the prompt was wanted (its logprobs): every choice ends after this step.
                prompt_only.push(id);
                continue;
            }
            samplers.push((id, id));
            if seq.pending_forks > 0 {
                let (params, prompt) = (seq.params.clone(), seq.tokens.clone());
                let forks = self.sched.fork_pending(id)?;
                self.runner.zero(&forks.freed);
                for &(child, k) in &forks.created {
                    self.runner.fork(id, child, k, &params, &prompt);
                    if let Some(c) = self.sched.get(child) {
                        self.output.fork(id, c);
                    }
                }
                copies.extend(forks.copies);
                samplers.extend(forks.children.iter().map(|&c| (c, id)));
            }
        }
        let work: Vec<(&Sequence, usize)> = plan
            .work
            .iter()
            .filter_map(|&(id, chunk)| self.sched.get(id).map(|s| (s, chunk)))
            .collect();
        let out = self.runner.run(StepInput {
            work,
            samplers,
            copies,
        })?;
        let step = self.stats.steps.fetch_add(1, Ordering::Relaxed);
        if step % EXPERT_LOAD_FLUSH_STEPS == EXPERT_LOAD_FLUSH_STEPS - 1 {
            self.flush_counters();
        }
        for &(id, chunk) in &plan.work {
            if let Some(seq) = self.sched.get_mut(id) {
                seq.cached += chunk;
            }
        }
        for p in out.prompt_logprobs {
            if let Some(seq) = self.sched.get_mut(p.id) {
                seq.prompt_logprobs_next = p.end;
            }
            self.output.prompt_logprobs(p);
        }
        for id in prompt_only {
            self.finish(id, FinishReason::Length, String::new());
        }
        for (id, e) in out.failed {
            tracing::warn!(seq = id, "constrained decoding stopped: {}", e.0);
            self.fail_request(id, "structured output: the grammar could not continue");
        }
        for sampled in out.sampled {
            let id = sampled.id;
            let Some(seq) = self.sched.get_mut(id) else {
                continue; // its request failed or was cancelled this step
            };
            self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            seq.tokens.push(sampled.token);
            let request = seq.request_id;
            match self.output.advance(seq, sampled) {
                Advance::Continue => {}
                Advance::Finish(reason, text) => self.finish(id, reason, text),
                // The client is gone: stop working for it.
                Advance::ClientGone => self.cancel(request),
            }
        }
        self.publish();
        self.stats
            .batch_tokens
            .fetch_add(out.tokens as u64, Ordering::Relaxed);
        self.stats
            .step_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(out.tokens)
    }
}
