//! The one generic decoder: embedding → N × (norm → attention → residual, norm → dense MLP or MoE → residual)
//! → norm → lm_head, run over a flat [`Batch`] with the paged [`KvCache`].

use candle_core::{DType, Device, Tensor};

use super::attention::{causal_mask, Attention, AttentionInputs, SeqAttention};
use super::batch::Batch;
use super::layers::{Linear, Mlp, RmsNorm};
use super::mla::MlaAttention;
use super::moe::MoeBlock;
use super::rope::Rope;
use super::spec::{AttentionKind, FfnSpec, ModelSpec};
use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::weights::{Matrix, WeightStore};

enum Ffn {
    Dense(Mlp),
    Moe(Box<MoeBlock>),
}

enum LayerAttention {
    Gqa(Attention),
    Mla(MlaAttention),
}

struct DecoderLayer {
    input_norm: RmsNorm,
    attention: LayerAttention,
    post_norm: RmsNorm,
    ffn: Ffn,
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogitsOutput {
    /// `[num_seqs, vocab]`: each sequence's last token.
    LastPerSequence,
    /// `[T, vocab]`: every token of the batch (tests).
    All,
    /// `[rows.len(), vocab]`: these flat token indices of the batch (prompt logprobs: every row of a
    /// sequence that asked for them, the last row of the others).
    Rows(Vec<u32>),
}

pub struct Model {
    spec: ModelSpec,
    embed: Matrix,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    device: Device,
    dtype: DType,
    /// The dtype of the weight matrices (on the CPU by default the checkpoint's own precision).
    weight_dtype: DType,
    /// Use the gathering attention path even where the in-place paths apply (tests compare both).
    gather_attention: bool,
    /// The KV cache's dtype (the compute dtype unless `--kv-cache-dtype` says otherwise).
    kv_dtype: DType,
    /// Decode steps replayed as CUDA graphs ([`Model::enable_decode_graphs`]).
    #[cfg(feature = "cuda")]
    decode_graphs: Option<super::decode_graphs::DecodeGraphs>,
}

impl Model {
    /// Builds the model from its spec, taking every tensor from `store`.
    pub fn load(spec: &ModelSpec, store: &mut WeightStore) -> Result<Self> {
        let h = spec.hidden_size;
        let eps = spec.rms_norm_eps;
        let embed = store.get_matrix("model.embed_tokens.weight", &[spec.vocab_size, h])?;
        let mut layers = Vec::with_capacity(spec.num_layers());
        for (i, ffn) in spec.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let attention = match &spec.attention {
                AttentionKind::Gqa(a) => LayerAttention::Gqa(Attention::load(
                    store,
                    &format!("{p}.self_attn"),
                    a,
                    h,
                    eps,
                )?),
                AttentionKind::Mla(m) => {
                    LayerAttention::Mla(MlaAttention::load(store, &format!("{p}.self_attn"), m, h)?)
                }
            };
            let ffn = match ffn {
                FfnSpec::Dense { intermediate_size } => Ffn::Dense(Mlp::load(
                    store,
                    &format!("{p}.mlp"),
                    ["gate_proj", "up_proj", "down_proj"],
                    h,
                    *intermediate_size,
                )?),
                FfnSpec::Moe(moe) => {
                    Ffn::Moe(Box::new(MoeBlock::load(store, &p, moe, &spec.names, h)?))
                }
            };
            layers.push(DecoderLayer {
                input_norm: RmsNorm::load(store, &format!("{p}.input_layernorm"), h, eps)?,
                attention,
                post_norm: RmsNorm::load(store, &format!("{p}.post_attention_layernorm"), h, eps)?,
                ffn,
            });
        }
        let norm = RmsNorm::load(store, "model.norm", h, eps)?;
        let lm_head = if spec.tie_word_embeddings && !store.contains("lm_head.weight") {
            Linear::from_weight(embed.clone())
        } else {
            Linear::load(store, "lm_head", spec.vocab_size, h, false)?
        };
        // Buffers some exporters keep; not parameters.
        store.skip_where(|n| n.ends_with("rotary_emb.inv_freq"));
        // Multi-token-prediction layers (DeepSeek-V3 `num_nextn_predict_layers`) are not used for decoding.
        let (first_mtp, end_mtp) = (spec.num_layers(), spec.num_layers() + spec.mtp_layers);
        store.skip_where(|n| {
            n.strip_prefix("model.layers.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i >= first_mtp && i < end_mtp)
        });
        Ok(Self {
            spec: spec.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope: Rope::new(spec.attention.rope()),
            device: store.device().clone(),
            dtype: store.dtype(),
            weight_dtype: store.matrix_dtype(),
            gather_attention: false,
            kv_dtype: store.dtype(),
            #[cfg(feature = "cuda")]
            decode_graphs: None,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Forces the device-generic gathering attention path (for testing it against the CPU one).
    /// Holds the KV cache in `dtype` (checked by `Precision::check_kv` before loading).
    pub fn set_kv_dtype(&mut self, dtype: DType) {
        self.kv_dtype = dtype;
    }

    /// The dtype the KV cache is held in.
    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    /// Replays decode steps of up to `max_batch` sequences as CUDA graphs, captured per batch-size
    /// bucket as they first occur. Applies on a CUDA device with dense embeddings and lm head (GGUF
    /// models keep the eager path) and the paged attention kernel; returns whether it does.
    pub fn enable_decode_graphs(&mut self, max_batch: usize) -> bool {
        #[cfg(feature = "cuda")]
        if self.device.is_cuda()
            && !self.gather_attention
            && max_batch > 0
            && self.embed.as_dense().is_some()
            && self.lm_head.weight().as_dense().is_some()
        {
            self.decode_graphs = Some(super::decode_graphs::DecodeGraphs::new(
                max_batch,
                self.spec.max_position_embeddings,
            ));
            return true;
        }
        let _ = max_batch;
        false
    }

    /// Zeroes what the model keeps of the last steps between steps (the CUDA graphs' input buffers and
    /// logits); the engine calls it when it goes idle. Nothing to do on the CPU.
    pub fn forget_step_inputs(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(graphs) = &self.decode_graphs {
            return graphs.forget();
        }
        Ok(())
    }

    /// Decode-step shapes captured as CUDA graphs so far (0 without graphs).
    pub fn decode_graphs_captured(&self) -> usize {
        #[cfg(feature = "cuda")]
        if let Some(graphs) = &self.decode_graphs {
            return graphs.captured();
        }
        0
    }

    /// Rope cos and sin tables (`[positions, rotary/2]` f32) on the model's device.
    #[cfg(feature = "cuda")]
    pub(crate) fn rope_tables(&self, positions: &[u32]) -> Result<(Tensor, Tensor)> {
        self.rope.tables(positions, &self.device)
    }

    pub fn set_gather_attention(&mut self, on: bool) {
        #[cfg(feature = "cuda")]
        if on {
            self.decode_graphs = None;
        }
        self.gather_attention = on;
    }

    /// Bytes one routed expert's weights take as held (the first MoE layer's; 0 without experts).
    pub fn expert_bytes_per_expert(&self) -> usize {
        self.layers
            .iter()
            .find_map(|l| match &l.ffn {
                Ffn::Moe(m) => Some(m.bytes_per_expert()),
                Ffn::Dense(_) => None,
            })
            .unwrap_or(0)
    }

    /// Routed-token counters of every MoE layer: (layer index, one counter per expert).
    pub fn expert_load(&self) -> Vec<(usize, std::sync::Arc<[std::sync::atomic::AtomicU64]>)> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match &l.ffn {
                Ffn::Moe(m) => Some((i, m.expert_load())),
                Ffn::Dense(_) => None,
            })
            .collect()
    }

    /// Brings the routed-token counts kept on a GPU into [`Model::expert_load`] (a no-op on the CPU).
    pub fn flush_expert_load(&self) -> Result<()> {
        for layer in &self.layers {
            if let Ffn::Moe(m) = &layer.ffn {
                m.flush_load()?;
            }
        }
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype (activations, attention, KV cache).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype weight matrices are held in.
    pub fn weight_dtype(&self) -> DType {
        self.weight_dtype
    }

    /// A paged cache sized for this model.
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        KvCache::new(
            self.layers.len(),
            num_blocks,
            block_size,
            self.spec.attention.kv_layout(),
            self.kv_dtype,
            &self.device,
        )
    }

    fn attention_inputs(&self, batch: &Batch) -> Result<AttentionInputs> {
        let (cos, sin) = self.rope.tables(&batch.positions, &self.device)?;
        let slots =
            Tensor::from_slice(&batch.slot_mapping, batch.slot_mapping.len(), &self.device)?;
        let window = self.spec.attention.sliding_window();
        // On the CPU in f32 attention reads the cache in place; other devices gather per sequence.
        let fast_cpu = !self.gather_attention && self.device.is_cpu() && self.dtype == DType::F32;
        // On a GPU the paged attention kernel reads the cache through the step's slot lists.
        let paged_gpu = !self.gather_attention && self.device.is_cuda();
        #[cfg(feature = "cuda")]
        let paged = if paged_gpu {
            let ctx: Vec<crate::cuda::ContextSeq<'_>> = batch
                .seqs
                .iter()
                .map(|s| crate::cuda::ContextSeq {
                    query_len: s.query_len,
                    context_slots: &s.context_slots,
                })
                .collect();
            Some(crate::cuda::PagedContext::new(&ctx, window, &self.device)?)
        } else {
            None
        };
        let seqs = batch
            .seqs
            .iter()
            .map(|s| {
                let (context_slots, mask) = if fast_cpu || paged_gpu {
                    (None, None)
                } else {
                    (
                        Some(Tensor::from_slice(
                            &s.context_slots,
                            s.context_len,
                            &self.device,
                        )?),
                        causal_mask(s.query_len, s.context_len, window, &self.device)?,
                    )
                };
                Ok(SeqAttention {
                    query_start: s.query_start,
                    query_len: s.query_len,
                    slots: s.context_slots.clone(),
                    context_slots,
                    mask,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AttentionInputs {
            cos: cos.to_dtype(self.dtype)?,
            sin: sin.to_dtype(self.dtype)?,
            slots,
            seqs,
            fast_cpu,
            window,
            #[cfg(feature = "cuda")]
            paged,
        })
    }

    /// Runs one step: writes the batch's keys/values into `kv` and returns logits (f32).
    pub fn forward(&self, batch: &Batch, kv: &KvCache, output: LogitsOutput) -> Result<Tensor> {
        self.check_batch(batch, kv)?;
        #[cfg(feature = "cuda")]
        if let Some(graphs) = &self.decode_graphs {
            if let Some(logits) = graphs.forward(self, batch, kv, &output)? {
                return Ok(logits);
            }
        }
        let inputs = self.attention_inputs(batch)?;
        let x = match &self.embed {
            Matrix::Dense(_) => {
                let ids = Tensor::from_slice(&batch.tokens, batch.tokens.len(), &self.device)?;
                self.embed_ids(&ids)?
            }
            quant => quant
                .rows_f32(&batch.tokens, &self.device)?
                .to_dtype(self.dtype)?,
        };
        let rows = match output {
            LogitsOutput::All => None,
            LogitsOutput::Rows(rows) => {
                if rows.iter().any(|&r| r as usize >= batch.num_tokens()) {
                    return Err(Error::Batch("logits row beyond the batch".into()));
                }
                let n = rows.len();
                Some(Tensor::from_vec(rows, n, &self.device)?)
            }
            LogitsOutput::LastPerSequence => {
                let last = batch.last_token_indices();
                Some(Tensor::from_vec(last, batch.seqs.len(), &self.device)?)
            }
        };
        self.run(x, &inputs, kv, rows.as_ref())
    }

    /// Refuses a batch that names tokens outside the vocabulary or slots outside the cache (kernels
    /// write through raw slots).
    fn check_batch(&self, batch: &Batch, kv: &KvCache) -> Result<()> {
        if batch.is_empty() {
            return Err(Error::Batch("empty batch".into()));
        }
        if let Some(&bad) = batch
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.spec.vocab_size)
        {
            return Err(Error::Batch(format!(
                "token id {bad} outside the vocabulary ({})",
                self.spec.vocab_size
            )));
        }
        let cache_slots = (kv.num_blocks() * kv.block_size()) as u32;
        let in_cache = |s: &u32| *s < cache_slots;
        if !batch.slot_mapping.iter().all(in_cache)
            || !batch
                .seqs
                .iter()
                .all(|s| s.context_slots.iter().all(in_cache))
        {
            return Err(Error::Batch(format!(
                "cache slot beyond the cache's {cache_slots}"
            )));
        }
        Ok(())
    }

    /// Embeddings of `ids` (`[T]` u32 on the model's device) from a dense table, in the compute dtype.
    pub(crate) fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let embed = self
            .embed
            .as_dense()
            .ok_or_else(|| Error::Batch("embedding table is not dense".into()))?;
        Ok(embed.index_select(ids, 0)?.to_dtype(self.dtype)?)
    }

    /// The layers, final norm and lm head over embedded tokens `x` (`[T, hidden]`): logits (f32) of the
    /// flat token indices `rows` (`[R]` u32), or of every token. Everything it reads lives on the device
    /// already, so a decode step's run can be captured as a graph.
    pub(crate) fn run(
        &self,
        x: Tensor,
        inputs: &AttentionInputs,
        kv: &KvCache,
        rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        // Each residual add is fused with the norm that follows it (one launch on a GPU); the last
        // layer's FFN output is added before the rows are picked.
        let mut x = x;
        let mut pending: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let (sum, h) = layer.input_norm.add_then_forward(&x, pending.as_ref())?;
            let a = match &layer.attention {
                LayerAttention::Gqa(att) => att.forward(&h, i, inputs, kv)?,
                LayerAttention::Mla(att) => att.forward(&h, i, inputs, kv)?,
            };
            let (sum, h) = layer.post_norm.add_then_forward(&sum, Some(&a))?;
            x = sum;
            pending = Some(match &layer.ffn {
                Ffn::Dense(mlp) => mlp.forward(&h)?,
                Ffn::Moe(moe) => moe.forward(&h)?,
            });
        }
        if let Some(f) = pending {
            x = (x + f)?;
        }
        let x = match rows {
            Some(rows) => x.index_select(rows, 0)?,
            None => x,
        };
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::BlockTable;
    use crate::weights::ModelSource;

    /// Kernels write through raw slots, so a batch pointing outside the cache must be refused up front.
    #[test]
    fn slots_outside_the_cache_are_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_moe");
        let loaded = crate::loader::load(&ModelSource::Dir(dir), &Device::Cpu, DType::F32).unwrap();
        let kv = loaded.model.new_kv_cache(2, 4).unwrap(); // slots 0..8
        let mut table = BlockTable::new();
        table.adopt(vec![5]); // slots 20..24
        let mut batch = Batch::default();
        batch.push(&[1, 2], 0, &table, 4).unwrap();
        let err = loaded
            .model
            .forward(&batch, &kv, LogitsOutput::LastPerSequence)
            .unwrap_err();
        assert!(err.to_string().contains("beyond the cache"), "{err}");
        let mut ok = BlockTable::new();
        ok.adopt(vec![1]);
        let mut batch = Batch::default();
        batch.push(&[1, 2], 0, &ok, 4).unwrap();
        assert!(loaded
            .model
            .forward(&batch, &kv, LogitsOutput::LastPerSequence)
            .is_ok());
    }

    /// A decode step padded to a graph's batch size gives the real rows the logits they had unpadded
    /// and writes nothing but the pad slot (GQA with a sliding window, and MLA).
    #[test]
    fn padded_decode_steps_keep_the_real_rows() {
        for fixture in ["mixtral", "moonlight"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(fixture);
            let loaded =
                crate::loader::load(&ModelSource::Dir(dir), &Device::Cpu, DType::F32).unwrap();
            let model = &loaded.model;
            let bs = 4;
            // Block 7 holds no sequence: the pad rows write there.
            let kv = model.new_kv_cache(8, bs).unwrap();
            let pad_slot = (7 * bs) as u32;
            let prompts: [&[u32]; 3] = [&[5, 9, 2, 7, 1], &[3, 8], &[4, 4, 6, 10, 11, 12, 2]];
            let mut alloc = crate::kv::BlockAllocator::new(7);
            let mut tables = Vec::new();
            for p in prompts {
                let mut t = BlockTable::new();
                t.reserve(p.len() + 1, bs, &mut alloc).unwrap();
                let mut b = Batch::default();
                b.push(p, 0, &t, bs).unwrap();
                model
                    .forward(&b, &kv, LogitsOutput::LastPerSequence)
                    .unwrap();
                tables.push(t);
            }
            let mut step = Batch::default();
            for (i, (p, t)) in prompts.iter().zip(&tables).enumerate() {
                step.push(&[13 + i as u32], p.len(), t, bs).unwrap();
            }
            let plain = model
                .forward(&step, &kv, LogitsOutput::LastPerSequence)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let real_blocks: Vec<Tensor> = (0..7)
                .map(|b| kv.block_keys(0, b).unwrap().copy().unwrap())
                .collect();
            let mut padded = step.clone();
            padded.pad_decode(8, pad_slot).unwrap();
            assert_eq!(padded.seqs.len(), 8);
            assert!(padded.is_decode_only());
            let logits = model
                .forward(&padded, &kv, LogitsOutput::LastPerSequence)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (row, (a, b)) in plain.iter().zip(&logits).enumerate() {
                let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(worst < 1e-4, "{fixture} row {row}: {worst}");
            }
            // The real rows rewrite this step's keys (rounded the same to ~1e-7); a pad row landing in a
            // sequence's block would change it by O(1).
            for (b, before) in real_blocks.iter().enumerate() {
                let now = kv.block_keys(0, b as u32).unwrap();
                let diff = (now - before).unwrap().abs().unwrap().max_all().unwrap();
                assert!(
                    diff.to_scalar::<f32>().unwrap() < 1e-5,
                    "{fixture} block {b} changed"
                );
            }
            let pad_block = kv
                .block_keys(0, 7)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(
                pad_block.to_scalar::<f32>().unwrap() > 0.0,
                "the pad rows wrote their slot"
            );
            assert!(
                step.clone().pad_decode(2, pad_slot).is_err(),
                "fewer rows than sequences"
            );
            let mut prompt = Batch::default();
            prompt.push(&[1, 2], 0, &tables[0], bs).unwrap();
            assert!(
                prompt.pad_decode(4, pad_slot).is_err(),
                "a prompt step is not padded"
            );
        }
    }
}
