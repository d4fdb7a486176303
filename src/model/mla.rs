//! Multi-head latent attention (DeepSeek-V2/V3, Kimi K2, Moonlight) over a latent paged cache. Each token
//! caches its normed compressed kv (`kv_lora_rank`) and its roped shared key (`qk_rope_head_dim`). Attention
//! runs in the absorbed form for prefill and decode alike: `W_uk` is folded into the query and `W_uv` into
//! the output, so the context is never decompressed into per-head keys and values.

use candle_core::{DType, Tensor, D};

use super::attention::AttentionInputs;
use super::cpu::attention as cpu_attention;
use super::layers::{Linear, RmsNorm};
use super::rope;
use super::spec::MlaSpec;
use crate::error::Result;
use crate::kv::KvCache;
use crate::weights::WeightStore;

/// The inner norms of MLA use this epsilon whatever `rms_norm_eps` says (as the reference does).
const MLA_NORM_EPS: f64 = 1e-6;

enum QueryProj {
    Direct(Linear),
    LowRank { a: Linear, norm: RmsNorm, b: Linear },
}

pub(crate) struct MlaAttention {
    spec: MlaSpec,
    q: QueryProj,
    kv_a: Linear,
    kv_norm: RmsNorm,
    /// `[heads, nope, kv_lora_rank]`: key up-projection, folded into the query.
    w_uk: Tensor,
    /// `[heads, kv_lora_rank, v_head_dim]`: value up-projection, applied after attention.
    w_uv_t: Tensor,
    o: Linear,
}

impl MlaAttention {
    pub(crate) fn load(
        store: &mut WeightStore,
        prefix: &str,
        spec: &MlaSpec,
        hidden: usize,
    ) -> Result<Self> {
        let nh = spec.num_heads;
        let qk = spec.qk_head_dim();
        let q = match spec.q_lora_rank {
            Some(r) => QueryProj::LowRank {
                a: Linear::load(store, &format!("{prefix}.q_a_proj"), r, hidden, false)?,
                norm: RmsNorm::load(store, &format!("{prefix}.q_a_layernorm"), r, MLA_NORM_EPS)?,
                b: Linear::load(store, &format!("{prefix}.q_b_proj"), nh * qk, r, false)?,
            },
            None => QueryProj::Direct(Linear::load(
                store,
                &format!("{prefix}.q_proj"),
                nh * qk,
                hidden,
                false,
            )?),
        };
        let l = spec.kv_lora_rank;
        let kv_a = Linear::load(
            store,
            &format!("{prefix}.kv_a_proj_with_mqa"),
            spec.latent_dim(),
            hidden,
            false,
        )?;
        let kv_norm = RmsNorm::load(store, &format!("{prefix}.kv_a_layernorm"), l, MLA_NORM_EPS)?;
        let (nope, v) = (spec.qk_nope_head_dim, spec.v_head_dim);
        let kv_b = store.get(&format!("{prefix}.kv_b_proj.weight"), &[nh * (nope + v), l])?;
        let kv_b = kv_b.reshape((nh, nope + v, l))?;
        let w_uk = kv_b.narrow(1, 0, nope)?.contiguous()?;
        let w_uv_t = kv_b.narrow(1, nope, v)?.transpose(1, 2)?.contiguous()?;
        let o = Linear::load(store, &format!("{prefix}.o_proj"), hidden, nh * v, false)?;
        Ok(Self {
            spec: spec.clone(),
            q,
            kv_a,
            kv_norm,
            w_uk,
            w_uv_t,
            o,
        })
    }

    /// On a GPU with the paged kernel: the latent write (kv norm + rope key + cache write) and the
    /// absorbed query rows (no-rope part beside the roped part) in one launch each
    /// (`cuda::mla_latent_write`, `cuda::mla_query`), then attention, the value absorption and the
    /// output projection. `None` where the fused kernels do not apply (off, or shapes they do not take:
    /// the caller runs the ops, nothing written yet).
    #[cfg(feature = "cuda")]
    fn fused_gpu_step(
        &self,
        x: &Tensor,
        q: &Tensor,
        layer: usize,
        inputs: &AttentionInputs,
        kv: &KvCache,
    ) -> Result<Option<Tensor>> {
        let Some(ctx) = inputs.fused_paged() else {
            return Ok(None);
        };
        let s = &self.spec;
        let (nope, r, l) = (s.qk_nope_head_dim, s.qk_rope_head_dim, s.kv_lora_rank);
        let rope = crate::cuda::MlaRope {
            cos: &inputs.cos,
            sin: &inputs.sin,
            interleaved: s.rope.interleaved,
        };
        // The absorbed no-rope query first: nothing is written before every kernel has taken its shapes.
        let q_lat = q
            .narrow(D::Minus1, 0, nope)?
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&self.w_uk)?; // [nh, T, L]
        let Some(q_rows) = crate::cuda::mla_query(q, &q_lat, &rope, nope, r)? else {
            return Ok(None);
        };
        let ckv = self.kv_a.forward(x)?;
        let (lat, _) = kv.layer(layer);
        let written = crate::cuda::mla_latent_write(
            &ckv,
            self.kv_norm.weight(),
            self.kv_norm.eps(),
            &rope,
            &inputs.slots,
            lat,
            l,
            r,
        )?;
        if !written {
            return Ok(None);
        }
        Ok(Some(self.attend_latent_gpu(&q_rows, lat, ctx)?))
    }

    /// Paged attention of the absorbed query rows (`[T, nh, L + R]`) over the layer's latent cache on a
    /// GPU, the value absorption and the output projection.
    #[cfg(feature = "cuda")]
    fn attend_latent_gpu(
        &self,
        q_rows: &Tensor,
        lat: &Tensor,
        ctx: &crate::cuda::PagedContext,
    ) -> Result<Tensor> {
        let s = &self.spec;
        let (nh, r, l, v) = (
            s.num_heads,
            s.qk_rope_head_dim,
            s.kv_lora_rank,
            s.v_head_dim,
        );
        let t = q_rows.dim(0)?;
        let heads = crate::cuda::CacheHeads {
            keys: lat,
            values: lat,
            key_dim: l + r,
            value_dim: l,
            key_slot_stride: l + r,
            key_head_stride: 0,
            value_slot_stride: l + r,
            value_head_stride: 0,
            heads_per_kv: nh,
        };
        let out_lat = crate::cuda::paged_attention(q_rows, &heads, ctx, s.softmax_scale as f32)?;
        // [T, nh, L] → [nh, T, L] @ [nh, L, v] → [nh, T, v] → [T, nh * v].
        let out = out_lat
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&self.w_uv_t)?;
        self.o.forward(&out.transpose(0, 1)?.reshape((t, nh * v))?)
    }

    /// `x`: `[T, hidden]` (already normed). Returns `[T, hidden]`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        inputs: &AttentionInputs,
        kv: &KvCache,
    ) -> Result<Tensor> {
        let s = &self.spec;
        let (nh, nope, r, l, v) = (
            s.num_heads,
            s.qk_nope_head_dim,
            s.qk_rope_head_dim,
            s.kv_lora_rank,
            s.v_head_dim,
        );
        let t = x.dim(0)?;
        let q = match &self.q {
            QueryProj::Direct(p) => p.forward(x)?,
            QueryProj::LowRank { a, norm, b } => b.forward(&norm.forward(&a.forward(x)?)?)?,
        };
        let q = q.reshape((t, nh, nope + r))?;
        #[cfg(feature = "cuda")]
        if let Some(out) = self.fused_gpu_step(x, &q, layer, inputs, kv)? {
            return Ok(out);
        }
        let q_nope = q.narrow(D::Minus1, 0, nope)?;
        let q_pe = rope::apply(
            &q.narrow(D::Minus1, nope, r)?,
            &inputs.cos,
            &inputs.sin,
            s.rope.interleaved,
        )?;
        let ckv = self.kv_a.forward(x)?;
        let c = self.kv_norm.forward(&ckv.narrow(1, 0, l)?)?;
        let k_pe = ckv.narrow(1, l, r)?.reshape((t, 1, r))?;
        let k_pe = rope::apply(&k_pe, &inputs.cos, &inputs.sin, s.rope.interleaved)?;
        let latent = Tensor::cat(&[&c, &k_pe.reshape((t, r))?], 1)?;
        kv.write(layer, &inputs.slots, &latent.reshape((t, 1, l + r))?, None)?;

        // Absorbed query: [nh, T, nope] @ [nh, nope, L] → [nh, T, L], then the rope part.
        let q_lat = q_nope.transpose(0, 1)?.contiguous()?.matmul(&self.w_uk)?;
        let q_full = Tensor::cat(&[&q_lat, &q_pe.transpose(0, 1)?.contiguous()?], 2)?; // [nh, T, L + R]

        #[cfg(feature = "cuda")]
        if let Some(ctx) = &inputs.paged {
            let (lat, _) = kv.layer(layer);
            let q_rows = q_full.transpose(0, 1)?.contiguous()?; // [T, nh, L + R]
            return self.attend_latent_gpu(&q_rows, lat, ctx);
        }
        if inputs.fast_cpu {
            let (lat, _) = kv.layer(layer);
            let q_rows = q_full.transpose(0, 1)?.contiguous()?; // [T, nh, L + R]
            let out_lat = super::cpu::host::with_f32(&q_rows, |qs| {
                cpu_attention::paged_attention_in_cache(
                    qs,
                    nh,
                    nh,
                    &[lat],
                    cpu_attention::CacheShape::Latent {
                        key_dim: l + r,
                        value_dim: l,
                    },
                    &inputs.rows(),
                    s.softmax_scale as f32,
                    None,
                    t,
                )
            })?;
            // [T, nh, L] → [nh, T, L] @ [nh, L, v] → [nh, T, v] → [T, nh * v].
            let out = Tensor::from_vec(out_lat, (t, nh, l), x.device())?
                .transpose(0, 1)?
                .contiguous()?
                .matmul(&self.w_uv_t)?;
            return self.o.forward(&out.transpose(0, 1)?.reshape((t, nh * v))?);
        }
        let mut outs = Vec::with_capacity(inputs.seqs.len());
        for seq in &inputs.seqs {
            let ql = seq.query_len;
            let slots = seq.slots_tensor()?;
            let (ctx_lat, _) = kv.gather(layer, slots)?;
            let ctx_lat = ctx_lat.to_dtype(q_full.dtype())?;
            let ctx = ctx_lat.dim(0)?;
            let ctx_lat = ctx_lat.reshape((ctx, l + r))?;
            let qs = q_full
                .narrow(1, seq.query_start, ql)?
                .contiguous()?
                .reshape((nh * ql, l + r))?;
            // Scores, mask and softmax in f32 whatever the compute dtype (the mask is f32).
            let scores = (qs.matmul(&ctx_lat.t()?)?.to_dtype(DType::F32)? * s.softmax_scale)?;
            let scores = match &seq.mask {
                Some(mask) => scores
                    .reshape((nh, ql, ctx))?
                    .broadcast_add(mask)?
                    .reshape((nh * ql, ctx))?,
                None => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(ctx_lat.dtype())?;
            let out_lat = probs.matmul(&ctx_lat.narrow(1, 0, l)?.contiguous()?)?; // [nh * ql, L]
            let out = out_lat.reshape((nh, ql, l))?.matmul(&self.w_uv_t)?; // [nh, ql, v]
            outs.push(out.transpose(0, 1)?.reshape((ql, nh * v))?);
        }
        let out = Tensor::cat(&outs, 0)?;
        self.o.forward(&out)
    }
}
