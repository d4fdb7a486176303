//! The engine's state and one step: schedule (see [`super::scheduler`]), run the model over the flat batch,
//! sample every sequence that reached its last token, detokenize, check stops, send events, free finished
//! sequences' blocks (zeroed). Owned by the engine thread only.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::constraint::{ConstraintError, TokenConstraint, TokenMask};
use super::detokenize::IncrementalDecoder;
use super::request::{EngineEvent, EngineRequest, FinishReason, TokenLogprob};
use super::sampler::{logprob_of, rank_of, top_logprobs, Sampler};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::sequence::{SeqId, Sequence};
use super::stats::EngineStats;
use super::stop::{StopMatcher, StopOutcome};

/// Counters the model keeps on a GPU (routed tokens per expert) are read back every this many steps
/// (one small copy; never per layer).
const EXPERT_LOAD_FLUSH_STEPS: u64 = 64;

use crate::error::Result;
use crate::kv::{BlockTable, KvCache};
use crate::loader::LoadedModel;
use crate::model::{Batch, LogitsOutput};

/// Each constrained sequence's next mask (run beside the model's forward pass).
fn compute_masks(
    constrained: &mut [(SeqId, Box<dyn TokenConstraint>)],
) -> HashMap<SeqId, std::result::Result<TokenMask, ConstraintError>> {
    use rayon::prelude::*;
    constrained
        .par_iter_mut()
        .map(|(id, c)| (*id, c.mask()))
        .collect()
}

/// Glue for one step: the [`Scheduler`] decides, the model runs over the KV cache (which this struct
/// owns), tokens are sampled, and outputs go to each request's channel.
pub struct EngineCore {
    loaded: Arc<LoadedModel>,
    kv: KvCache,
    sched: Scheduler,
    stats: Arc<EngineStats>,
}

impl EngineCore {
    pub fn new(
        loaded: Arc<LoadedModel>,
        config: SchedulerConfig,
        stats: Arc<EngineStats>,
    ) -> Result<Self> {
        let kv = loaded
            .model
            .new_kv_cache(config.num_blocks, config.block_size)?;
        stats
            .kv_blocks_total
            .store(config.num_blocks, Ordering::Relaxed);
        stats
            .kv_blocks_free
            .store(config.num_blocks, Ordering::Relaxed);
        Ok(Self {
            kv,
            loaded,
            sched: Scheduler::new(config),
            stats,
        })
    }

    /// Brings counters the model keeps on its device (per-expert routed tokens) up to date; called every
    /// [`EXPERT_LOAD_FLUSH_STEPS`] steps and when the engine goes idle.
    pub fn flush_counters(&self) {
        if let Err(e) = self.loaded.model.flush_expert_load() {
            tracing::warn!(error = %e, "could not read the expert-load counters");
        }
    }

    pub fn has_work(&self) -> bool {
        self.sched.has_work()
    }

    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    pub fn free_blocks(&self) -> usize {
        self.sched.free_blocks()
    }

    /// Queues a request (its first choice; the others fork from it after prefill).
    pub fn add(&mut self, req: EngineRequest) {
        let id = self.sched.next_id();
        let sampler = Sampler::new(req.params.sampling.clone()).with_prompt(&req.prompt);
        let n = req.params.n.max(1);
        let seq = Sequence {
            id,
            request_id: req.id,
            choice: 0,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            cached: 0,
            table: BlockTable::new(),
            sampler,
            decoder: IncrementalDecoder::new(req.params.skip_special_tokens),
            stop: StopMatcher::new(req.params.stop.clone()),
            params: req.params,
            events: req.events,
            pending_forks: n - 1,
            admitted: 0,
            prompt_logprobs_next: 1,
            constraint: req.constraint,
        };
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

    /// A constraint could not go on for `id`: its request fails (every choice), with a message that
    /// names no content.
    fn fail_sequence(&mut self, id: SeqId, e: &ConstraintError) {
        let Some(seq) = self.sched.get(id) else {
            return;
        };
        tracing::warn!(seq = id, "constrained decoding stopped: {}", e.0);
        let _ = seq.events.send(EngineEvent::Failed {
            message: "structured output: the grammar could not continue".into(),
        });
        let rid = seq.request_id;
        self.cancel(rid);
    }

    /// Fails every sequence (after an internal error), telling each client.
    pub fn fail_all(&mut self, message: &str) {
        for seq in self.sched.sequences() {
            let _ = seq.events.send(EngineEvent::Failed {
                message: message.to_owned(),
            });
        }
        self.abort_all();
    }

    /// Aborts everything (shutdown).
    pub fn abort_all(&mut self) {
        for id in self.sched.ids() {
            self.finish(id, FinishReason::Abort, String::new());
        }
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
    }

    /// Removes a sequence, frees (and zeroes) its blocks, and tells the client.
    fn finish(&mut self, id: SeqId, reason: FinishReason, text: String) {
        let Some((seq, freed)) = self.sched.remove(id) else {
            return;
        };
        self.zero(&freed);
        // Published before the client hears of the finish, so observers never see stale counts.
        self.publish();
        let _ = seq.events.send(EngineEvent::Finished {
            choice: seq.choice,
            reason,
            text,
            completion_tokens: seq.generated(),
        });
        // Choices never forked (cancelled before prefill ended) finish too.
        for k in 0..seq.pending_forks {
            let _ = seq.events.send(EngineEvent::Finished {
                choice: seq.choice + 1 + k,
                reason,
                text: String::new(),
                completion_tokens: 0,
            });
        }
    }

    /// Zeroes freed blocks in every layer before they are reused.
    fn zero(&mut self, freed: &[u32]) {
        if freed.is_empty() {
            return;
        }
        if let Err(e) = self.kv.zero_blocks(freed) {
            tracing::error!(error = %e, "zeroing freed KV blocks failed");
        }
    }

    /// Runs one step. Returns the number of tokens processed (0 when idle).
    pub fn step(&mut self) -> Result<usize> {
        let step_plan = self.sched.schedule();
        self.zero(&step_plan.freed);
        self.stats
            .preemptions
            .fetch_add(step_plan.preempted as u64, Ordering::Relaxed);
        for id in step_plan.unfit {
            self.finish(id, FinishReason::Length, String::new());
        }
        let plan = step_plan.work;
        self.publish();
        if plan.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let bs = self.sched.config().block_size;
        let mut batch = Batch::default();
        // Logits rows of each planned sequence: (first, count). All rows of its chunk when it wants prompt
        // logprobs, else its last row only.
        let mut rows: Vec<(usize, usize)> = Vec::with_capacity(plan.len());
        let mut selected: Vec<u32> = Vec::new();
        for &(id, chunk) in &plan {
            if let Some(seq) = self.sched.get(id) {
                let start = batch.num_tokens();
                batch.push(
                    &seq.tokens[seq.cached..seq.cached + chunk],
                    seq.cached,
                    &seq.table,
                    bs,
                )?;
                let all = seq.wants_prompt_logprobs();
                let first = if all { start } else { start + chunk - 1 };
                rows.push((selected.len(), batch.num_tokens() - first));
                selected.extend(first as u32..batch.num_tokens() as u32);
            }
        }
        let output = if selected.len() == plan.len() {
            LogitsOutput::LastPerSequence
        } else {
            LogitsOutput::Rows(selected)
        };
        // Constrained sequences that sample this step: their masks are computed while the model runs.
        let mut constrained: Vec<(SeqId, Box<dyn TokenConstraint>)> = plan
            .iter()
            .filter_map(|&(id, chunk)| {
                let seq = self.sched.get_mut(id)?;
                let samples = seq.cached + chunk == seq.tokens.len() && seq.params.max_tokens > 0;
                samples.then(|| seq.constraint.take().map(|c| (id, c)))?
            })
            .collect();
        let (logits, mut masks) = {
            let (model, kv) = (&self.loaded.model, &self.kv);
            rayon::join(
                || -> Result<Vec<Vec<f32>>> {
                    Ok(model.forward(&batch, kv, output)?.to_vec2::<f32>()?)
                },
                || compute_masks(&mut constrained),
            )
        };
        for (id, c) in constrained {
            if let Some(seq) = self.sched.get_mut(id) {
                seq.constraint = Some(c);
            }
        }
        let logits = logits?;
        let tokens = batch.num_tokens();
        let step = self.stats.steps.fetch_add(1, Ordering::Relaxed);
        if step % EXPERT_LOAD_FLUSH_STEPS == EXPERT_LOAD_FLUSH_STEPS - 1 {
            self.flush_counters();
        }
        // Sequences whose prompt is done sample from their last row (a prompt's forked choices share it).
        let mut samplers: Vec<(SeqId, usize)> = Vec::new();
        for (&(id, chunk), &(first, count)) in plan.iter().zip(&rows) {
            if self
                .sched
                .get(id)
                .is_some_and(|s| s.wants_prompt_logprobs())
            {
                self.send_prompt_logprobs(id, &logits[first..first + count]);
            }
            let done = match self.sched.get_mut(id) {
                Some(seq) => {
                    seq.cached += chunk;
                    seq.cached == seq.tokens.len()
                }
                None => false,
            };
            if !done {
                continue;
            }
            if self.sched.get(id).is_some_and(|s| s.params.max_tokens == 0) {
                // Only the prompt was wanted (its logprobs): every choice ends here.
                self.finish(id, FinishReason::Length, String::new());
                continue;
            }
            let row = first + count - 1;
            let children = self.fork_pending(id)?;
            samplers.push((id, row));
            // Forked choices are in their parent's state: the same mask.
            if let Some(Ok(mask)) = masks.get(&id).cloned() {
                for &c in &children {
                    masks.insert(c, Ok(mask.clone()));
                }
            }
            samplers.extend(children.into_iter().map(|c| (c, row)));
        }
        let mut allowed: HashMap<SeqId, TokenMask> = HashMap::new();
        for (id, mask) in masks {
            match mask {
                Ok(m) => {
                    allowed.insert(id, m);
                }
                Err(e) => {
                    samplers.retain(|&(s, _)| s != id);
                    self.fail_sequence(id, &e);
                }
            }
        }
        for (id, row, token) in self.sample_all(&samplers, &logits, &allowed) {
            self.advance_one(id, &logits[row], token);
        }
        self.publish();
        self.stats
            .batch_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
        self.stats
            .step_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(tokens)
    }

    /// Sends the log-probabilities of the prompt tokens that `logits` (one row per token of this step's
    /// chunk, from position `cached`) predict and that were not sent before (a recomputed prompt is not
    /// sent twice). Rows are reduced in parallel.
    fn send_prompt_logprobs(&mut self, id: SeqId, logits: &[Vec<f32>]) {
        use rayon::prelude::*;
        let Some(seq) = self.sched.get_mut(id) else {
            return;
        };
        let top = seq.params.prompt_logprobs.unwrap_or(0);
        // Row j predicts the token at position cached + j + 1.
        let from = seq.prompt_logprobs_next.max(seq.cached + 1);
        let end = (seq.cached + logits.len() + 1).min(seq.prompt_len);
        if from >= end {
            return;
        }
        let prompt = &seq.tokens;
        let cached = seq.cached;
        let (tokens, ranks): (Vec<TokenLogprob>, Vec<u32>) = (from..end)
            .into_par_iter()
            .map(|pos| {
                let row = &logits[pos - 1 - cached];
                let token = prompt[pos];
                (
                    TokenLogprob {
                        token,
                        logprob: logprob_of(row, token as usize),
                        top: top_logprobs(row, top),
                    },
                    rank_of(row, token as usize),
                )
            })
            .unzip();
        seq.prompt_logprobs_next = end;
        let _ = seq.events.send(EngineEvent::PromptLogprobs {
            from,
            tokens,
            ranks,
        });
    }

    /// Forks the pending choices of `id` after its prompt ([`Scheduler::fork_pending`]), copying the
    /// partly filled last block for each; returns the choices that sample now.
    fn fork_pending(&mut self, id: SeqId) -> Result<Vec<SeqId>> {
        let forks = self.sched.fork_pending(id)?;
        for (src, dst) in forks.copies {
            self.kv.copy_block(src, dst)?;
        }
        Ok(forks.children)
    }

    /// Samples the next token of each `(sequence, logits row)` in parallel: each sequence has its own
    /// sampler and random stream, so results do not depend on the thread that ran them.
    fn sample_all(
        &mut self,
        work: &[(SeqId, usize)],
        logits: &[Vec<f32>],
        masks: &HashMap<SeqId, TokenMask>,
    ) -> Vec<(SeqId, usize, u32)> {
        use rayon::prelude::*;
        // Each sequence's place in `work` (delivery order) and its logits row.
        let place: HashMap<SeqId, (usize, usize)> = work
            .iter()
            .enumerate()
            .map(|(i, &(id, row))| (id, (i, row)))
            .collect();
        let mut picked: Vec<(usize, SeqId, usize, u32)> = self
            .sched
            .sequences_mut()
            .filter_map(|seq| place.get(&seq.id).map(|&(i, row)| (i, seq.id, row, seq)))
            .collect::<Vec<_>>()
            .into_par_iter()
            .filter_map(|(i, id, row, seq)| {
                let l = logits.get(row)?;
                let token = match masks.get(&id) {
                    Some(mask) => {
                        let mut masked = l.clone();
                        mask.apply(&mut masked);
                        seq.sampler.sample(&masked)
                    }
                    None => seq.sampler.sample(l),
                };
                Some((i, id, row, token))
            })
            .collect();
        picked.sort_by_key(|p| p.0);
        picked
            .into_iter()
            .map(|(_, id, row, token)| (id, row, token))
            .collect()
    }

    fn advance_one(&mut self, id: SeqId, logits: &[f32], token: u32) {
        let eos = &self.loaded.generation.eos_token_ids;
        let Some(seq) = self.sched.get_mut(id) else {
            return;
        };
        seq.sampler.observe(token);
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        seq.tokens.push(token);
        // The constraint follows the chosen token; once it is complete the choice ends.
        let mut constraint_done = false;
        if let Some(c) = seq.constraint.as_mut() {
            match c.accept(token) {
                Ok(()) => constraint_done = c.is_finished(),
                Err(e) => {
                    self.fail_sequence(id, &e);
                    return;
                }
            }
        }
        let info = if seq.params.logprobs {
            vec![TokenLogprob {
                token,
                logprob: logprob_of(logits, token as usize),
                top: top_logprobs(logits, seq.params.top_logprobs),
            }]
        } else {
            Vec::new()
        };
        let is_eos = !seq.params.ignore_eos && eos.contains(&token);
        let is_stop_token = seq.params.stop_token_ids.contains(&token);
        let mut finish: Option<FinishReason> = None;
        let mut text = String::new();
        if is_eos || is_stop_token {
            finish = Some(FinishReason::Stop);
        } else {
            let delta = seq
                .decoder
                .push(&self.loaded.tokenizer, token)
                .unwrap_or_default();
            match seq.stop.push(&delta) {
                StopOutcome::Continue(t) => text = t,
                StopOutcome::Stopped(t) => {
                    text = t;
                    finish = Some(FinishReason::Stop);
                }
            }
        }
        if finish.is_none() && (constraint_done || seq.generated() >= seq.params.max_tokens) {
            finish = Some(if constraint_done {
                FinishReason::Stop
            } else {
                FinishReason::Length
            });
            let tail = seq
                .decoder
                .flush(&self.loaded.tokenizer)
                .unwrap_or_default();
            let (StopOutcome::Continue(t) | StopOutcome::Stopped(t)) = seq.stop.push(&tail);
            text.push_str(&t);
            text.push_str(&seq.stop.flush());
        }
        match finish {
            None => {
                if seq
                    .events
                    .send(EngineEvent::Delta {
                        choice: seq.choice,
                        text,
                        tokens: info,
                    })
                    .is_err()
                {
                    // The client is gone: stop working for it.
                    let rid = seq.request_id;
                    self.cancel(rid);
                }
            }
            Some(reason) => {
                let _ = seq.events.send(EngineEvent::Delta {
                    choice: seq.choice,
                    text: String::new(),
                    tokens: info,
                });
                self.finish(id, reason, text);
            }
        }
    }
}
