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

    pub fn set_gather_attention(&mut self, on: bool) {
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
        let inputs = self.attention_inputs(batch)?;
        let mut x = match &self.embed {
            Matrix::Dense(embed) => {
                let ids = Tensor::from_slice(&batch.tokens, batch.tokens.len(), &self.device)?;
                embed.index_select(&ids, 0)?.to_dtype(self.dtype)?
            }
            quant => quant
                .rows_f32(&batch.tokens, &self.device)?
                .to_dtype(self.dtype)?,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let a = match &layer.attention {
                LayerAttention::Gqa(att) => att.forward(&h, i, &inputs, kv)?,
                LayerAttention::Mla(att) => att.forward(&h, i, &inputs, kv)?,
            };
            x = (x + a)?;
            let h = layer.post_norm.forward(&x)?;
            let f = match &layer.ffn {
                Ffn::Dense(mlp) => mlp.forward(&h)?,
                Ffn::Moe(moe) => moe.forward(&h)?,
            };
            x = (x + f)?;
        }
        let x = match output {
            LogitsOutput::All => x,
            LogitsOutput::Rows(rows) => {
                if rows.iter().any(|&r| r as usize >= batch.num_tokens()) {
                    return Err(Error::Batch("logits row beyond the batch".into()));
                }
                let n = rows.len();
                x.index_select(&Tensor::from_vec(rows, n, &self.device)?, 0)?
            }
            LogitsOutput::LastPerSequence => {
                let last = batch.last_token_indices();
                x.index_select(&Tensor::from_vec(last, batch.seqs.len(), &self.device)?, 0)?
            }
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
}
