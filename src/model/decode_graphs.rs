//! Decode steps on a GPU replayed as CUDA graphs (feature `cuda`). A step in which every sequence decodes
//! one token is padded to a batch-size bucket; its inputs are written into that bucket's fixed device
//! buffers and the step captured once — the forward's ~1,400 launches (48 layers) become one. Steps with
//! a prompt chunk, prompt logprobs, more sequences than the largest bucket or a context beyond the
//! model's positions run as before.
//!
//! Keyed by (batch bucket, context bucket): the paged attention kernel sizes its context partitions
//! from the longest visible range, so a graph is captured for a context bound (1 Ki, 4 Ki, 16 Ki, …
//! tokens) and serves every step below it. A shape whose capture fails runs eagerly from then on (the
//! failure is logged with the shape, never with content). Pad rows write no key/value
//! ([`crate::cuda::PAD_SLOT`]) and read one cache row; they are dropped before sampling (they do count
//! in the per-expert load metric).
//!
//! Memory beyond the eager path: per graph the activations of one step at its batch size (held by the
//! graph between replays) and its input buffers (context slots: batch × context bound × 4 bytes); one rope
//! table of the model's positions shared by all.

#[cfg(feature = "cuda")]
pub(crate) use captured::DecodeGraphs;

#[cfg(any(feature = "cuda", test))]
/// Batch sizes a step is padded to (about 1.5× apart past 8).
const BATCH_BUCKETS: [usize; 13] = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256];
#[cfg(any(feature = "cuda", test))]
/// The smallest context bound; each next one is 4× larger (the last is the model's positions).
const FIRST_CONTEXT_BOUND: usize = 1024;

#[cfg(any(feature = "cuda", test))]
/// The (batch, context bound) a decode step of `seqs` sequences whose longest context is `longest` is
/// captured at, or `None` where it runs eagerly (more than `max_batch` sequences or the largest bucket,
/// a context beyond `max_context` positions).
pub(crate) fn step_shape(
    seqs: usize,
    longest: usize,
    max_batch: usize,
    max_context: usize,
) -> Option<(usize, usize)> {
    if seqs == 0 || seqs > max_batch || longest > max_context {
        return None;
    }
    let rows = *BATCH_BUCKETS.iter().find(|&&b| b >= seqs)?;
    let mut bound = FIRST_CONTEXT_BOUND;
    while bound < longest {
        bound *= 4;
    }
    Some((rows, bound.min(max_context)))
}

#[cfg(feature = "cuda")]
mod captured {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    use candle_core::{DType, Tensor};

    use super::step_shape;
    use crate::cuda::{CapturedGraph, ContextSeq, PagedContext, PAD_SLOT};
    use crate::error::{Error, Result};
    use crate::kv::KvCache;
    use crate::model::attention::AttentionInputs;
    use crate::model::batch::Batch;
    use crate::model::decoder::{LogitsOutput, Model};

    /// The captured decode steps of one model.
    pub(crate) struct DecodeGraphs {
        max_batch: usize,
        /// Positions the model takes (the rope table's length; steps beyond run eagerly).
        max_context: usize,
        /// Only the engine thread steps the model; the lock is never contended.
        state: Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        /// The cache the graphs were captured against (they bake in its addresses).
        kv_id: u64,
        /// `[max_context, rotary/2]` f32 cos and sin, made at the first capture.
        rope: Option<(Tensor, Tensor)>,
        graphs: HashMap<(usize, usize), StepGraph>,
        failed: HashSet<(usize, usize)>,
    }

    /// One captured step shape. Fields drop in order: the logits (memory of the graph) before the graph.
    struct StepGraph {
        logits: Tensor,
        inputs: StepBuffers,
        graph: CapturedGraph,
    }

    /// The fixed device buffers a captured step reads.
    struct StepBuffers {
        /// `[3 · rows]` u32: token ids, positions, slot mapping (one upload per step); the three
        /// below are views of it.
        ids: Tensor,
        tokens: Tensor,
        positions: Tensor,
        slots: Tensor,
        context: PagedContext,
        window: Option<usize>,
    }

    impl StepBuffers {
        fn new(rows: usize, context_bound: usize, model: &Model) -> Result<Self> {
            let device = model.device();
            let ids = Tensor::zeros(3 * rows, DType::U32, device)?;
            Ok(Self {
                tokens: ids.narrow(0, 0, rows)?,
                positions: ids.narrow(0, rows, rows)?,
                slots: ids.narrow(0, 2 * rows, rows)?,
                ids,
                context: PagedContext::with_capacity(
                    rows,
                    rows * context_bound,
                    context_bound,
                    device,
                )?,
                window: model.spec().attention.sliding_window(),
            })
        }

        /// Writes a padded step into the buffers (uploads, outside any capture).
        fn fill(&self, padded: &Batch) -> Result<()> {
            let ids: Vec<u32> = [&padded.tokens, &padded.positions, &padded.slot_mapping]
                .into_iter()
                .flatten()
                .copied()
                .collect();
            if ids.len() != self.ids.elem_count() {
                return Err(Error::Batch(format!(
                    "a padded step of {} rows for buffers of {}",
                    padded.num_tokens(),
                    self.ids.elem_count() / 3
                )));
            }
            let n = ids.len();
            self.ids
                .slice_set(&Tensor::from_vec(ids, n, self.ids.device())?, 0, 0)?;
            let seqs: Vec<ContextSeq<'_>> = padded
                .seqs
                .iter()
                .map(|s| ContextSeq {
                    query_len: s.query_len,
                    context_slots: &s.context_slots,
                })
                .collect();
            self.context.fill(&seqs, self.window)
        }

        /// Zeroes the buffers (the last step's token ids, positions and slots).
        fn clear(&self) -> Result<()> {
            self.ids.zero_set()?;
            self.context.clear()
        }

        /// The step over the buffers: every launch reads them or the model; nothing crosses to the host.
        fn run(&self, model: &Model, rope: &(Tensor, Tensor), kv: &KvCache) -> Result<Tensor> {
            let x = model.embed_ids(&self.tokens)?;
            let inputs = AttentionInputs {
                cos: rope
                    .0
                    .index_select(&self.positions, 0)?
                    .to_dtype(model.dtype())?,
                sin: rope
                    .1
                    .index_select(&self.positions, 0)?
                    .to_dtype(model.dtype())?,
                slots: self.slots.clone(),
                seqs: Vec::new(),
                fast_cpu: false,
                window: self.window,
                paged: Some(self.context.clone()),
            };
            model.run(x, &inputs, kv, None)
        }
    }

    impl DecodeGraphs {
        /// Graphs for steps of up to `max_batch` sequences (at most the largest bucket) of `model`.
        pub(crate) fn new(max_batch: usize, max_context: usize) -> Self {
            Self {
                max_batch,
                max_context,
                state: Mutex::new(State::default()),
            }
        }

        /// Zeroes what the graphs keep of the last step of each shape: its input buffers (token ids,
        /// positions, slots) and its logits. Called when the engine goes idle, so no request's tokens
        /// stay in them past the request; the activations inside the graph's own memory are rewritten by
        /// the shape's next step (like the memory an eager step frees).
        pub(crate) fn forget(&self) -> Result<()> {
            let state = self
                .state
                .lock()
                .map_err(|_| Error::Device("decode graph state poisoned".into()))?;
            for step in state.graphs.values() {
                step.inputs.clear()?;
                step.logits.zero_set()?;
            }
            Ok(())
        }

        /// The step's logits through a graph (captured now if its shape is new), or `None` where the step
        /// runs eagerly.
        pub(crate) fn forward(
            &self,
            model: &Model,
            batch: &Batch,
            kv: &KvCache,
            output: &LogitsOutput,
        ) -> Result<Option<Tensor>> {
            if *output != LogitsOutput::LastPerSequence || !batch.is_decode_only() {
                return Ok(None);
            }
            let n = batch.seqs.len();
            let longest = batch.seqs.iter().map(|s| s.context_len).max().unwrap_or(0);
            let Some(key) = step_shape(n, longest, self.max_batch, self.max_context) else {
                return Ok(None);
            };
            let mut state = self
                .state
                .lock()
                .map_err(|_| Error::Device("decode graph state poisoned".into()))?;
            if state.kv_id != kv.id() {
                state.graphs.clear();
                state.failed.clear();
                state.kv_id = kv.id();
            }
            if state.failed.contains(&key) {
                return Ok(None);
            }
            let mut padded = batch.clone();
            padded.pad_decode(key.0, PAD_SLOT)?;
            if let Some(step) = state.graphs.get(&key) {
                step.inputs.fill(&padded)?;
                step.graph.launch()?;
                // A copy: the graph's buffer is rewritten by the next replay.
                return Ok(Some(step.logits.narrow(0, 0, n)?.copy()?));
            }
            let rope = match &state.rope {
                Some(r) => r.clone(),
                None => {
                    let positions: Vec<u32> = (0..self.max_context as u32).collect();
                    let r = model.rope_tables(&positions)?;
                    state.rope = Some(r.clone());
                    r
                }
            };
            let inputs = StepBuffers::new(key.0, key.1, model)?;
            inputs.fill(&padded)?;
            match CapturedGraph::capture(model.device(), || inputs.run(model, &rope, kv)) {
                Ok((eager, logits, graph)) => {
                    // The first replay brings the graph's memory to life and must give what the eager
                    // run gave (the same kernels on the same inputs; it rewrites the same cache rows).
                    if let Err(e) = graph.launch() {
                        // Never launched: its logits buffer was never allocated, so it is not freed.
                        std::mem::forget(logits);
                        drop(graph);
                        return Ok(Some(self.give_up(
                            &mut state,
                            key,
                            &e.to_string(),
                            eager,
                            n,
                        )?));
                    }
                    // An error here marks the shape eager too, or every later step would retry it.
                    let why = match agree(&eager, &logits) {
                        Ok(true) => None,
                        Ok(false) => Some("its replay differs from the eager step".to_owned()),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(why) = why {
                        drop(logits);
                        drop(graph);
                        state.failed.insert(key);
                        // The replay rewrote this step's cache rows: write them again eagerly.
                        let eager = inputs.run(model, &rope, kv)?;
                        return Ok(Some(self.give_up(&mut state, key, &why, eager, n)?));
                    }
                    tracing::info!(
                        batch = key.0,
                        context = key.1,
                        "decode step captured as a CUDA graph"
                    );
                    let out = logits.narrow(0, 0, n)?.copy()?;
                    state.graphs.insert(
                        key,
                        StepGraph {
                            logits,
                            inputs,
                            graph,
                        },
                    );
                    Ok(Some(out))
                }
                Err(e) => {
                    tracing::warn!(
                        batch = key.0,
                        context = key.1,
                        error = %e,
                        "decode step capture failed; this shape runs without a graph"
                    );
                    state.failed.insert(key);
                    Ok(None)
                }
            }
        }

        /// Marks a shape as eager from now on (logged with the shape and the reason, never content) and
        /// returns the eager step's logits.
        fn give_up(
            &self,
            state: &mut State,
            key: (usize, usize),
            why: &str,
            eager: Tensor,
            n: usize,
        ) -> Result<Tensor> {
            tracing::warn!(
                batch = key.0,
                context = key.1,
                error = why,
                "decode step graph dropped; this shape runs without a graph"
            );
            state.failed.insert(key);
            Ok(eager.narrow(0, 0, n)?)
        }

        /// Shapes captured so far (tests and logs).
        pub(crate) fn captured(&self) -> usize {
            self.state.lock().map_or(0, |s| s.graphs.len())
        }
    }

    /// Whether a replay's logits match the eager step's (within bf16 rounding of the largest logit: the
    /// same kernels give the same numbers; a graph reading a stale buffer is off by far more). A weak
    /// check — the first replay reads the very inputs the eager run read, so a graph that baked in a
    /// step's values passes it; `tests/gpu_graphs.rs` (new contents each replay) is the real one.
    fn agree(eager: &Tensor, replay: &Tensor) -> Result<bool> {
        let scale = eager.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = (eager - replay)?.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(diff.is_finite() && diff <= 2e-2 * scale.max(1e-3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_up_to_their_buckets() {
        assert_eq!(step_shape(1, 5, 64, 40960), Some((1, 1024)));
        assert_eq!(step_shape(3, 1024, 64, 40960), Some((4, 1024)));
        assert_eq!(step_shape(9, 1025, 64, 40960), Some((16, 4096)));
        assert_eq!(step_shape(33, 20_000, 64, 40960), Some((48, 40960)));
        assert_eq!(
            step_shape(50, 600, 50, 40960),
            Some((64, 1024)),
            "bucket past max_batch"
        );
        assert_eq!(step_shape(65, 600, 64, 40960), None, "more than max_batch");
        assert_eq!(
            step_shape(257, 600, 1000, 40960),
            None,
            "beyond the largest bucket"
        );
        assert_eq!(
            step_shape(2, 40961, 64, 40960),
            None,
            "beyond the positions"
        );
        assert_eq!(step_shape(2, 300, 64, 512), Some((2, 512)), "short models");
        assert_eq!(step_shape(0, 0, 64, 512), None);
    }
}
