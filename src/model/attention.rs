//! Grouped-query attention over the paged KV cache: projections (optional bias, q/k norm, qkv clipping),
//! rope, writing this step's keys/values through the slot mapping, then per sequence causal attention over
//! its whole cached context (mixed prefill and decode in one batch).

use candle_core::{DType, Tensor, D};

use super::layers::{Linear, RmsNorm};
use super::spec::{AttentionSpec, QkNorm};
use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::weights::WeightStore;

/// Per-batch tensors shared by every layer's attention.
pub(crate) struct AttentionInputs {
    /// `[T, rotary_dim/2]` each.
    pub cos: Tensor,
    pub sin: Tensor,
    /// `[T]` u32: where each token's key/value goes.
    pub slots: Tensor,
    pub seqs: Vec<SeqAttention>,
    /// Attention reads the cache in place on CPU f32 buffers ([`super::cpu_attention`]).
    pub fast_cpu: bool,
    pub window: Option<usize>,
    /// On a GPU: the step's context for the paged attention kernel (then `seqs` carry no tensors).
    #[cfg(feature = "cuda")]
    pub paged: Option<crate::cuda::PagedContext>,
}

impl AttentionInputs {
    /// The step's paged context where the fused GPU kernels run (a GPU step, `--cuda-fusions` on).
    #[cfg(feature = "cuda")]
    pub(crate) fn fused_paged(&self) -> Option<&crate::cuda::PagedContext> {
        self.paged.as_ref().filter(|_| crate::cuda::fusions())
    }

    /// Per-sequence rows for [`super::cpu::attention::paged_attention`].
    pub(crate) fn rows(&self) -> Vec<super::cpu::attention::SeqRows<'_>> {
        self.seqs
            .iter()
            .map(|s| super::cpu::attention::SeqRows {
                query_start: s.query_start,
                query_len: s.query_len,
                context_slots: &s.slots,
            })
            .collect()
    }
}

/// One sequence's view for attention.
pub(crate) struct SeqAttention {
    pub query_start: usize,
    pub query_len: usize,
    /// Cache slots of positions `0..context_len`.
    pub slots: Vec<u32>,
    /// The same as a `[context_len]` u32 tensor (gathering path only).
    pub context_slots: Option<Tensor>,
    /// Additive mask `[query_len, context_len]`, or `None` when every query sees the whole context.
    pub mask: Option<Tensor>,
}

impl SeqAttention {
    /// The context slots as a tensor (present on the gathering path).
    pub(crate) fn slots_tensor(&self) -> Result<&Tensor> {
        self.context_slots
            .as_ref()
            .ok_or_else(|| crate::Error::Kv("missing context slots".into()))
    }
}

/// Builds the additive causal (and sliding-window) mask of one sequence, if one is needed.
pub(crate) fn causal_mask(
    query_len: usize,
    context_len: usize,
    window: Option<usize>,
    device: &candle_core::Device,
) -> Result<Option<Tensor>> {
    let first_pos = context_len - query_len;
    let windowed = window.is_some_and(|w| context_len > w);
    if query_len == 1 && !windowed {
        return Ok(None);
    }
    let mut mask = Vec::with_capacity(query_len * context_len);
    for i in 0..query_len {
        let p = first_pos + i;
        for j in 0..context_len {
            let visible = j <= p && window.is_none_or(|w| p - j < w);
            mask.push(if visible { 0f32 } else { f32::NEG_INFINITY });
        }
    }
    Ok(Some(Tensor::from_vec(
        mask,
        (query_len, context_len),
        device,
    )?))
}

pub(crate) struct Attention {
    spec: AttentionSpec,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    scale: f64,
}

impl Attention {
    pub(crate) fn load(
        store: &mut WeightStore,
        prefix: &str,
        spec: &AttentionSpec,
        hidden: usize,
        eps: f64,
    ) -> Result<Self> {
        let (nh, nkv, hd) = (spec.num_heads, spec.num_kv_heads, spec.head_dim);
        let q = Linear::load(
            store,
            &format!("{prefix}.q_proj"),
            nh * hd,
            hidden,
            spec.qkv_bias,
        )?;
        let k = Linear::load(
            store,
            &format!("{prefix}.k_proj"),
            nkv * hd,
            hidden,
            spec.qkv_bias,
        )?;
        let v = Linear::load(
            store,
            &format!("{prefix}.v_proj"),
            nkv * hd,
            hidden,
            spec.qkv_bias,
        )?;
        let o = Linear::load(store, &format!("{prefix}.o_proj"), hidden, nh * hd, false)?;
        let (q_dim, k_dim) = match spec.qk_norm {
            QkNorm::None => (0, 0),
            QkNorm::PerHead => (hd, hd),
            QkNorm::Whole => (nh * hd, nkv * hd),
        };
        let (q_norm, k_norm) = if spec.qk_norm == QkNorm::None {
            (None, None)
        } else {
            (
                Some(RmsNorm::load(
                    store,
                    &format!("{prefix}.q_norm"),
                    q_dim,
                    eps,
                )?),
                Some(RmsNorm::load(
                    store,
                    &format!("{prefix}.k_norm"),
                    k_dim,
                    eps,
                )?),
            )
        };
        Ok(Self {
            spec: spec.clone(),
            q,
            k,
            v,
            o,
            q_norm,
            k_norm,
            scale: 1.0 / (hd as f64).sqrt(),
        })
    }

    /// `x`: `[T, hidden]` (already normed). Returns `[T, hidden]`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        inputs: &AttentionInputs,
        kv: &KvCache,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (
            self.spec.num_heads,
            self.spec.num_kv_heads,
            self.spec.head_dim,
        );
        let t = x.dim(0)?;
        let mut qkv = Linear::forward_many(x, &[&self.q, &self.k, &self.v])?.into_iter();
        let (Some(mut q), Some(mut k), Some(mut v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            return Err(Error::Batch("q/k/v projection failed".into()));
        };
        #[cfg(feature = "cuda")]
        if let Some(out) = self.fused_gpu_step(&q, &k, &v, layer, inputs, kv)? {
            return Ok(out);
        }
        if self.spec.qk_norm == QkNorm::Whole {
            if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
                q = qn.forward(&q)?;
                k = kn.forward(&k)?;
            }
        }
        if let Some(c) = self.spec.clip_qkv {
            q = q.clamp(-c, c)?;
            k = k.clamp(-c, c)?;
            v = v.clamp(-c, c)?;
        }
        let mut q = q.reshape((t, nh, hd))?;
        let mut k = k.reshape((t, nkv, hd))?;
        let v = v.reshape((t, nkv, hd))?;
        if self.spec.qk_norm == QkNorm::PerHead {
            if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
                q = qn.forward(&q)?;
                k = kn.forward(&k)?;
            }
        }
        let q = self.rotate(&q, inputs)?;
        let k = self.rotate(&k, inputs)?;
        kv.write(layer, &inputs.slots, &k, Some(&v))?;

        let groups = nh / nkv;
        #[cfg(feature = "cuda")]
        if let Some(ctx) = &inputs.paged {
            let (kc, vc) = kv.layer(layer);
            let vc = vc.ok_or_else(|| crate::Error::Kv("GQA cache without values".into()))?;
            return self.attend_paged_gpu(&q, kc, vc, ctx);
        }
        if inputs.fast_cpu {
            let (kc, vc) = kv.layer(layer);
            let vc = vc.ok_or_else(|| crate::Error::Kv("GQA cache without values".into()))?;
            let q = q.contiguous()?;
            let out = super::cpu::host::with_f32(&q, |qs| {
                super::cpu::attention::paged_attention_in_cache(
                    qs,
                    nh,
                    groups,
                    &[kc, vc],
                    super::cpu::attention::CacheShape::PerHead {
                        kv_heads: nkv,
                        head_dim: hd,
                    },
                    &inputs.rows(),
                    self.scale as f32,
                    inputs.window,
                    t,
                )
            })?;
            return self
                .o
                .forward(&Tensor::from_vec(out, (t, nh * hd), x.device())?);
        }
        let mut outs = Vec::with_capacity(inputs.seqs.len());
        for seq in &inputs.seqs {
            let ql = seq.query_len;
            let slots = seq.slots_tensor()?;
            let (kc, vc) = kv.gather(layer, slots)?;
            let vc = vc.ok_or_else(|| crate::Error::Kv("GQA cache without values".into()))?;
            // A cache held in another dtype (`--kv-cache-dtype`) is widened to the compute dtype here.
            let (kc, vc) = (kc.to_dtype(q.dtype())?, vc.to_dtype(q.dtype())?);
            let ctx = kc.dim(0)?;
            // [ql, nh, hd] → [nkv, groups * ql, hd]; head h = kv_head * groups + g (HF's repeat_kv order).
            let qs = q
                .narrow(0, seq.query_start, ql)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((nkv, groups * ql, hd))?;
            let kc = kc.transpose(0, 1)?.contiguous()?; // [nkv, ctx, hd]
            let vc = vc.transpose(0, 1)?.contiguous()?;
            // Scores, mask and softmax in f32 whatever the compute dtype (the mask is f32).
            let scores = (qs.matmul(&kc.t()?)?.to_dtype(DType::F32)? * self.scale)?;
            let scores = match &seq.mask {
                Some(mask) => scores
                    .reshape((nkv, groups, ql, ctx))?
                    .broadcast_add(mask)?
                    .reshape((nkv, groups * ql, ctx))?,
                None => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(vc.dtype())?;
            let out = probs.matmul(&vc)?; // [nkv, groups * ql, hd]
            let out = out
                .reshape((nh, ql, hd))?
                .transpose(0, 1)?
                .reshape((ql, nh * hd))?;
            outs.push(out);
        }
        let out = Tensor::cat(&outs, 0)?;
        self.o.forward(&out)
    }

    /// On a GPU with the paged kernel: q/k norm, rope and the KV write in one launch
    /// (`cuda::qk_norm_rope_write`), then attention and the output projection. `None` where the fused
    /// kernel does not apply (whole-q/k norms, clipping, shapes it does not take).
    #[cfg(feature = "cuda")]
    fn fused_gpu_step(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layer: usize,
        inputs: &AttentionInputs,
        kv: &KvCache,
    ) -> Result<Option<Tensor>> {
        let Some(ctx) = inputs.fused_paged() else {
            return Ok(None);
        };
        if self.spec.clip_qkv.is_some() || self.spec.qk_norm == QkNorm::Whole {
            return Ok(None);
        }
        let norms = match (self.spec.qk_norm, &self.q_norm, &self.k_norm) {
            (QkNorm::PerHead, Some(qn), Some(kn)) => Some((qn.weight(), kn.weight(), qn.eps())),
            (QkNorm::PerHead, _, _) => return Ok(None),
            _ => None,
        };
        let (nh, nkv, hd) = (
            self.spec.num_heads,
            self.spec.num_kv_heads,
            self.spec.head_dim,
        );
        let (kc, vc) = kv.layer(layer);
        let Some(vc) = vc else {
            return Ok(None);
        };
        let step = crate::cuda::QkvStep {
            q,
            k,
            v,
            norms,
            cos: &inputs.cos,
            sin: &inputs.sin,
            rotary_dim: self.spec.rope.rotary_dim.min(hd),
            interleaved: self.spec.rope.interleaved,
            slots: &inputs.slots,
            k_cache: kc,
            v_cache: vc,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        };
        let Some(q) = crate::cuda::qk_norm_rope_write(&step)? else {
            return Ok(None);
        };
        Ok(Some(self.attend_paged_gpu(&q, kc, vc, ctx)?))
    }

    /// Paged attention of roped `q` (`[T, nh, hd]`) over the layer's cache on a GPU, then the output
    /// projection.
    #[cfg(feature = "cuda")]
    fn attend_paged_gpu(
        &self,
        q: &Tensor,
        kc: &Tensor,
        vc: &Tensor,
        ctx: &crate::cuda::PagedContext,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (
            self.spec.num_heads,
            self.spec.num_kv_heads,
            self.spec.head_dim,
        );
        let heads = crate::cuda::CacheHeads {
            keys: kc,
            values: vc,
            key_dim: hd,
            value_dim: hd,
            key_slot_stride: nkv * hd,
            key_head_stride: hd,
            value_slot_stride: nkv * hd,
            value_head_stride: hd,
            heads_per_kv: nh / nkv,
        };
        let t = q.dim(0)?;
        let out = crate::cuda::paged_attention(q, &heads, ctx, self.scale as f32)?;
        self.o.forward(&out.reshape((t, nh * hd))?)
    }

    fn rotate(&self, x: &Tensor, inputs: &AttentionInputs) -> Result<Tensor> {
        let rd = self.spec.rope.rotary_dim;
        let hd = self.spec.head_dim;
        let interleaved = self.spec.rope.interleaved;
        if rd >= hd {
            return super::rope::apply(x, &inputs.cos, &inputs.sin, interleaved);
        }
        let rot = super::rope::apply(
            &x.narrow(D::Minus1, 0, rd)?,
            &inputs.cos,
            &inputs.sin,
            interleaved,
        )?;
        Ok(Tensor::cat(
            &[&rot, &x.narrow(D::Minus1, rd, hd - rd)?],
            D::Minus1,
        )?)
    }
}
