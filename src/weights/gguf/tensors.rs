//! A GGUF model's tensors under the names the generic decoder asks for (the HF names of
//! `model.layers.{i}…`): llama.cpp's names translated (`blk.3.attn_q.weight` →
//! `model.layers.3.self_attn.q_proj.weight`), stacked experts (`ffn_gate_exps`, `[E, I, H]`) seen as one
//! matrix per expert, llama-architecture q/k rows put back in HF's rotate-half order, and DeepSeek's split
//! MLA `attn_k_b` / `attn_v_b` joined back into `kv_b_proj`. Quantized tensors are handed out in place
//! ([`QuantMatrix`] over the mapped file); float ones and anything asked for densely are read into tensors.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::format::{type_name, TensorInfo};
use super::GgufModel;
use crate::error::{Error, Result};
use crate::weights::quant::{layout_error, QuantMatrix, QuantType};
use crate::weights::source::FileBytes;

/// How the decoder's names relate to llama.cpp's for one model.
#[derive(Debug, Clone)]
pub struct NameMap {
    /// The MoE block's prefix under `model.layers.{i}` (`mlp`, `block_sparse_moe`).
    pub moe_block: String,
    /// Expert projection names: gate, up, down.
    pub expert_proj: [String; 3],
    /// The shared expert's name under the MoE block (`shared_expert`, `shared_experts`).
    pub shared: String,
    /// llama.cpp's converter interleaved each head's q/k rows (the `llama` architecture): `(q heads,
    /// kv heads)` to undo it.
    pub unpermute_qk: Option<(usize, usize)>,
    /// MLA heads and `(nope, v)` head dims, to join `attn_k_b` / `attn_v_b`.
    pub mla: Option<(usize, usize, usize)>,
}

/// The bytes of a tensor's data: elements / block × block bytes; `None` for types we do not size.
pub(crate) fn data_bytes(info: &TensorInfo) -> Option<usize> {
    let elems: usize = info.shape.iter().product();
    let (block, bytes) = match info.type_id {
        0 => (1, 4),
        1 | 30 => (1, 2),
        id => {
            let q = QuantType::from_ggml_id(id)?;
            (q.block_elems(), q.block_bytes())
        }
    };
    (elems.is_multiple_of(block)).then_some(elems / block * bytes)
}

struct Raw {
    part: usize,
    name: String,
    shape: Vec<usize>,
    type_id: u32,
    start: usize,
    /// Bytes of the data (`None`: a type we do not size).
    len: Option<usize>,
}

/// Where a decoder tensor comes from.
#[derive(Debug, Clone)]
enum Source {
    Whole(usize),
    /// Expert `e` of a stacked `[E, rows, cols]` tensor.
    Expert(usize, usize),
    /// q or k of the llama architecture: rows re-ordered per head.
    Unpermute(usize, usize),
    /// `kv_b_proj` from `attn_k_b` `[H, L, nope]` and `attn_v_b` `[H, v, L]`.
    KvB(usize, usize),
}

pub struct GgufTensors {
    paths: Vec<PathBuf>,
    files: Vec<Arc<FileBytes>>,
    raw: Vec<Raw>,
    map: HashMap<String, Source>,
    /// GGUF tensors no decoder name maps to (reported as unused unless skipped).
    unmapped: Vec<String>,
    names: NameMap,
}

/// `blk.{i}.{leaf}` → `(i, leaf)`.
fn layer_of(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (i, leaf) = rest.split_once('.')?;
    Some((i.parse().ok()?, leaf))
}

impl GgufTensors {
    pub fn new(model: &GgufModel, names: NameMap) -> Result<Self> {
        let mut raw = Vec::new();
        for (part, name, info) in model.tensors() {
            let p = &model.parts[part];
            let start = p
                .header
                .data_start
                .checked_add(info.offset as usize)
                .filter(|s| data_bytes(info).is_none_or(|n| s + n <= p.bytes.len()))
                .ok_or_else(|| Error::BadShard {
                    path: p.path.clone(),
                    message: format!("tensor {name}: data runs past the end of the file"),
                })?;
            raw.push(Raw {
                part,
                name: name.to_owned(),
                shape: info.shape.clone(),
                type_id: info.type_id,
                start,
                len: data_bytes(info),
            });
        }
        let mut this = Self {
            paths: model.parts.iter().map(|p| p.path.clone()).collect(),
            files: model.parts.iter().map(|p| p.bytes.clone()).collect(),
            raw,
            map: HashMap::new(),
            unmapped: Vec::new(),
            names,
        };
        this.build_map();
        Ok(this)
    }

    fn build_map(&mut self) {
        let by_name: HashMap<String, usize> = self
            .raw
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        let n = &self.names;
        let moe = &n.moe_block;
        for (i, r) in self.raw.iter().enumerate() {
            let name = r.name.as_str();
            let global = match name {
                "token_embd.weight" => Some("model.embed_tokens.weight".to_owned()),
                "output_norm.weight" => Some("model.norm.weight".to_owned()),
                "output.weight" => Some("lm_head.weight".to_owned()),
                _ => None,
            };
            if let Some(hf) = global {
                self.map.insert(hf, Source::Whole(i));
                continue;
            }
            let Some((layer, leaf)) = layer_of(name) else {
                self.unmapped.push(name.to_owned());
                continue;
            };
            let p = format!("model.layers.{layer}");
            let (stem, suffix) = leaf.rsplit_once('.').unwrap_or((leaf, "weight"));
            let attn = |s: &str| format!("{p}.self_attn.{s}.{suffix}");
            let proj = ["gate", "up", "down"];
            let mapped: Option<(String, Source)> = match stem {
                "attn_norm" => Some((format!("{p}.input_layernorm.{suffix}"), Source::Whole(i))),
                "ffn_norm" => Some((
                    format!("{p}.post_attention_layernorm.{suffix}"),
                    Source::Whole(i),
                )),
                "attn_q" | "attn_k" => {
                    let hf = attn(if stem == "attn_q" { "q_proj" } else { "k_proj" });
                    match n.unpermute_qk {
                        Some((q, kv)) => Some((
                            hf,
                            Source::Unpermute(i, if stem == "attn_q" { q } else { kv }),
                        )),
                        None => Some((hf, Source::Whole(i))),
                    }
                }
                "attn_v" => Some((attn("v_proj"), Source::Whole(i))),
                "attn_output" => Some((attn("o_proj"), Source::Whole(i))),
                "attn_q_norm" => Some((attn("q_norm"), Source::Whole(i))),
                "attn_k_norm" => Some((attn("k_norm"), Source::Whole(i))),
                "attn_q_a" => Some((attn("q_a_proj"), Source::Whole(i))),
                "attn_q_a_norm" => Some((attn("q_a_layernorm"), Source::Whole(i))),
                "attn_q_b" => Some((attn("q_b_proj"), Source::Whole(i))),
                "attn_kv_a_mqa" => Some((attn("kv_a_proj_with_mqa"), Source::Whole(i))),
                "attn_kv_a_norm" => Some((attn("kv_a_layernorm"), Source::Whole(i))),
                "attn_kv_b" => Some((attn("kv_b_proj"), Source::Whole(i))),
                "attn_k_b" => {
                    // Joined with attn_v_b, unless the file also keeps attn_kv_b (then both are extra).
                    let kv_b = format!("blk.{layer}.attn_kv_b.weight");
                    let v_b = by_name.get(&format!("blk.{layer}.attn_v_b.weight"));
                    match v_b {
                        Some(&v) if !by_name.contains_key(&kv_b) => {
                            Some((attn("kv_b_proj"), Source::KvB(i, v)))
                        }
                        _ => None,
                    }
                }
                "attn_v_b" => {
                    // Consumed with attn_k_b.
                    let kv_b = format!("blk.{layer}.attn_kv_b.weight");
                    if !by_name.contains_key(&kv_b)
                        && by_name.contains_key(&format!("blk.{layer}.attn_k_b.weight"))
                    {
                        continue;
                    }
                    None
                }
                "ffn_gate_inp" => Some((format!("{p}.{moe}.gate.{suffix}"), Source::Whole(i))),
                "exp_probs_b" => Some((
                    format!("{p}.{moe}.gate.e_score_correction_bias"),
                    Source::Whole(i),
                )),
                "ffn_gate_inp_shexp" => Some((
                    format!("{p}.{moe}.shared_expert_gate.{suffix}"),
                    Source::Whole(i),
                )),
                _ => {
                    let pick =
                        |tail: &str| proj.iter().position(|p| stem == format!("ffn_{p}{tail}"));
                    if let Some(k) = pick("_exps") {
                        let experts = r.shape.first().copied().unwrap_or(0);
                        for e in 0..experts {
                            self.map.insert(
                                format!("{p}.{moe}.experts.{e}.{}.{suffix}", n.expert_proj[k]),
                                Source::Expert(i, e),
                            );
                        }
                        continue;
                    } else if let Some(k) = pick("_shexp") {
                        Some((
                            format!("{p}.{moe}.{}.{}_proj.{suffix}", n.shared, proj[k]),
                            Source::Whole(i),
                        ))
                    } else if let Some(k) = pick("") {
                        Some((
                            format!("{p}.mlp.{}_proj.{suffix}", proj[k]),
                            Source::Whole(i),
                        ))
                    } else if let Some((k, e)) = proj.iter().enumerate().find_map(|(k, p)| {
                        // Older Mixtral files: one tensor per expert, `ffn_gate.{e}`.
                        stem.strip_prefix(&format!("ffn_{p}."))
                            .and_then(|e| e.parse::<usize>().ok())
                            .map(|e| (k, e))
                    }) {
                        Some((
                            format!("{p}.{moe}.experts.{e}.{}.{suffix}", n.expert_proj[k]),
                            Source::Whole(i),
                        ))
                    } else {
                        None
                    }
                }
            };
            match mapped {
                Some((hf, src)) => {
                    self.map.insert(hf, src);
                }
                None => self.unmapped.push(name.to_owned()),
            }
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Every decoder name this file provides.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    /// GGUF tensors no decoder name maps to.
    pub fn unmapped(&self) -> &[String] {
        &self.unmapped
    }

    /// The file a decoder name comes from (for messages).
    pub fn path_of(&self, name: &str) -> PathBuf {
        match self.map.get(name) {
            Some(
                Source::Whole(i)
                | Source::Expert(i, _)
                | Source::Unpermute(i, _)
                | Source::KvB(i, _),
            ) => self.paths[self.raw[*i].part].clone(),
            None => self.paths[0].clone(),
        }
    }

    /// The shape the decoder sees.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        Some(match self.map.get(name)? {
            Source::Whole(i) | Source::Unpermute(i, _) => self.raw[*i].shape.clone(),
            Source::Expert(i, _) => self.raw[*i].shape[1..].to_vec(),
            Source::KvB(k, v) => {
                let (ks, vs) = (&self.raw[*k].shape, &self.raw[*v].shape);
                match (ks.as_slice(), vs.as_slice()) {
                    ([h, l, nope], [_, v, _]) => vec![h * (nope + v), *l],
                    _ => ks.clone(),
                }
            }
        })
    }

    /// The GGUF tensor name and type behind a decoder name (for messages).
    fn describe(&self, i: usize) -> (String, String) {
        (self.raw[i].name.clone(), type_name(self.raw[i].type_id))
    }

    fn err(&self, i: usize, message: String) -> Error {
        Error::BadShard {
            path: self.paths[self.raw[i].part].clone(),
            message: format!("tensor {}: {message}", self.raw[i].name),
        }
    }

    fn unsupported(&self, i: usize) -> Error {
        let (tensor, dtype) = self.describe(i);
        Error::UnsupportedDtype {
            path: self.paths[self.raw[i].part].clone(),
            tensor,
            dtype,
        }
    }

    /// Checks the decoder's expected shape (size-1 dimensions aside: a `[1, H]` gate may be stored `[H]`).
    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let found = self.shape_of(name).unwrap_or_default();
        let squeeze =
            |s: &[usize]| -> Vec<usize> { s.iter().copied().filter(|&d| d != 1).collect() };
        if found == shape || squeeze(&found) == squeeze(shape) {
            return Ok(());
        }
        Err(Error::WrongShape {
            path: self.path_of(name),
            tensor: name.to_owned(),
            expected: shape.to_vec(),
            found,
        })
    }

    /// Rows of the raw tensor `i` as a quantized matrix: `[rows, cols]` starting at row `first`.
    fn quant_rows(&self, i: usize, first: usize, rows: usize) -> Result<Option<QuantMatrix>> {
        let r = &self.raw[i];
        let Some(ty) = QuantType::from_ggml_id(r.type_id) else {
            return Ok(None);
        };
        let cols = r.shape.last().copied().unwrap_or(0);
        let row_bytes = ty
            .row_bytes(cols)
            .ok_or_else(|| self.err(i, layout_error(ty, rows, cols, 0).unwrap_or_default()))?;
        QuantMatrix::mapped(
            ty,
            rows,
            cols,
            self.files[r.part].clone(),
            r.start + first * row_bytes,
        )
        .map(Some)
        .map_err(|m| self.err(i, m))
    }

    /// Rows `first..first + rows` of raw tensor `i` as f32 values.
    fn f32_rows(&self, i: usize, first: usize, rows: usize) -> Result<Vec<f32>> {
        if let Some(q) = self.quant_rows(i, first, rows)? {
            return Ok(q.dequantize());
        }
        let t = self
            .float_rows(i, first, rows)?
            .ok_or_else(|| self.unsupported(i))?;
        Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// Rows `first..first + rows` of a float (f32 / f16 / bf16) raw tensor `i`, flat, in its stored dtype
    /// (`None` for other types). The mapped pages are dropped from the resident set once copied, so a
    /// GGUF's float tensors are held once, not twice (copy + mapped file), while it loads.
    fn float_rows(&self, i: usize, first: usize, rows: usize) -> Result<Option<Tensor>> {
        let r = &self.raw[i];
        let cols = r.shape.last().copied().unwrap_or(1);
        let (dtype, elem) = match r.type_id {
            0 => (DType::F32, 4),
            1 => (DType::F16, 2),
            30 => (DType::BF16, 2),
            _ => return Ok(None),
        };
        let start = r.start + first * cols * elem;
        let end = start + rows * cols * elem;
        let file = &self.files[r.part];
        let t = Tensor::from_raw_buffer(&file[start..end], dtype, &[rows * cols], &Device::Cpu)?;
        file.release(start, end);
        Ok(Some(t))
    }

    /// The raw tensor `i`'s rows for a decoder name, as the decoder wants them.
    fn rows_of(&self, src: &Source) -> (usize, usize, usize) {
        match *src {
            Source::Whole(i) | Source::Unpermute(i, _) | Source::KvB(i, _) => {
                let s = &self.raw[i].shape;
                (
                    i,
                    0,
                    s[..s.len().saturating_sub(1)]
                        .iter()
                        .product::<usize>()
                        .max(1),
                )
            }
            Source::Expert(i, e) => {
                let s = &self.raw[i].shape;
                let per = s.get(1).copied().unwrap_or(0);
                (i, e * per, per)
            }
        }
    }

    /// Row order undoing llama.cpp's q/k interleave: decoder row `(h, half, j)` is file row `(h, j, half)`.
    pub fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
        let hd = rows / heads.max(1);
        if heads == 0 || hd == 0 || !rows.is_multiple_of(heads) || hd % 2 == 1 {
            // Not a per-head rope layout: an order past the last row, refused by the readers.
            return (0..rows).map(|r| r + rows).collect();
        }
        let half = hd / 2;
        (0..rows)
            .map(|r| {
                let (h, within) = (r / hd.max(1), r % hd.max(1));
                let (part, j) = (within / half.max(1), within % half.max(1));
                h * hd + 2 * j + part
            })
            .collect()
    }

    /// A decoder tensor in place when it is block-quantized (`None` for float tensors and the joined
    /// `kv_b_proj`).
    pub fn quant(&self, name: &str, shape: &[usize]) -> Result<Option<QuantMatrix>> {
        let Some(src) = self.map.get(name) else {
            return Ok(None);
        };
        self.check_shape(name, shape)?;
        if matches!(src, Source::KvB(..)) || shape.len() != 2 {
            return Ok(None);
        }
        let (i, first, rows) = self.rows_of(src);
        let Some(q) = self.quant_rows(i, first, rows)? else {
            return Ok(None);
        };
        match src {
            Source::Unpermute(_, heads) => q
                .select_rows(&Self::unpermute_order(rows, *heads))
                .map(Some)
                .map_err(|m| self.err(i, m)),
            _ => Ok(Some(q)),
        }
    }

    /// The stacked GGUF tensor behind expert 0's decoder name (`ffn_*_exps`), as stored: type,
    /// `[E, rows, cols]`, bytes; `None` when it is not a block-quantized stacked tensor of `experts`.
    pub fn stacked_quant(
        &self,
        expert0: &str,
        experts: usize,
    ) -> Option<(QuantType, [usize; 3], &[u8])> {
        let Some(Source::Expert(i, 0)) = self.map.get(expert0) else {
            return None;
        };
        let r = &self.raw[*i];
        let ty = QuantType::from_ggml_id(r.type_id)?;
        let [e, rows, cols] = r.shape[..] else {
            return None;
        };
        if e != experts {
            return None;
        }
        let len = r.len?;
        Some((
            ty,
            [e, rows, cols],
            &self.files[r.part][r.start..r.start + len],
        ))
    }

    /// The decoder names of every expert of the stacked tensor behind `expert0`.
    pub fn names_sharing(&self, expert0: &str) -> Vec<String> {
        let Some(Source::Expert(i, _)) = self.map.get(expert0) else {
            return Vec::new();
        };
        self.map
            .iter()
            .filter(|(_, s)| matches!(s, Source::Expert(j, _) if j == i))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether a decoder tensor is stored block-quantized.
    pub fn is_quantized(&self, name: &str) -> bool {
        match self.map.get(name) {
            Some(Source::Whole(i) | Source::Expert(i, _) | Source::Unpermute(i, _)) => {
                QuantType::from_ggml_id(self.raw[*i].type_id).is_some()
            }
            _ => false,
        }
    }

    /// A decoder tensor read into a dense tensor of `shape` and `dtype` (dequantized if need be).
    pub fn dense(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let src = self.map.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.paths[0].clone(),
            tensor: name.to_owned(),
        })?;
        self.check_shape(name, shape)?;
        if let Source::Whole(_) | Source::Expert(..) = src {
            // A float tensor goes straight from its stored dtype to `dtype` (no f32 detour).
            let (i, first, rows) = self.rows_of(src);
            if let Some(t) = self.float_rows(i, first, rows)? {
                return Ok(t.reshape(shape)?.to_dtype(dtype)?.to_device(device)?);
            }
        }
        let values = match src {
            Source::KvB(k, v) => self.join_kv_b(*k, *v)?,
            _ => {
                let (i, first, rows) = self.rows_of(src);
                let mut values = self.f32_rows(i, first, rows)?;
                if let Source::Unpermute(_, heads) = src {
                    let cols = values.len() / rows.max(1);
                    let order = Self::unpermute_order(rows, *heads);
                    let mut out = Vec::with_capacity(values.len());
                    for &r in &order {
                        let row = values.get(r * cols..(r + 1) * cols).ok_or_else(|| {
                            self.err(i, format!("{rows} rows do not split into {heads} heads"))
                        })?;
                        out.extend_from_slice(row);
                    }
                    values = out;
                }
                values
            }
        };
        Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
    }

    /// Head by head: `k_b[h]ᵀ` (`[nope, L]`) then `v_b[h]` (`[v, L]`), as HF's `kv_b_proj` rows.
    fn join_kv_b(&self, k: usize, v: usize) -> Result<Vec<f32>> {
        let (ks, vs) = (self.raw[k].shape.clone(), self.raw[v].shape.clone());
        let ([h, l, nope], [h2, vd, l2]) = (ks.as_slice(), vs.as_slice()) else {
            return Err(self.err(
                k,
                format!("attn_k_b {ks:?} / attn_v_b {vs:?} are not [H, L, nope] / [H, v, L]"),
            ));
        };
        if h != h2 || l != l2 {
            return Err(self.err(k, format!("attn_k_b {ks:?} does not match attn_v_b {vs:?}")));
        }
        let kb = self.f32_rows(k, 0, h * l)?;
        let vb = self.f32_rows(v, 0, h * vd)?;
        let mut out = Vec::with_capacity(h * (nope + vd) * l);
        for head in 0..*h {
            let kh = &kb[head * l * nope..(head + 1) * l * nope];
            for n in 0..*nope {
                out.extend((0..*l).map(|j| kh[j * nope + n]));
            }
            out.extend_from_slice(&vb[head * vd * l..(head + 1) * vd * l]);
        }
        Ok(out)
    }

    /// Counts and bytes by ggml type, for `inspect` and the load summary.
    pub fn type_mix(&self) -> BTreeMap<String, (usize, usize)> {
        let mut mix = BTreeMap::new();
        for r in &self.raw {
            let e = mix.entry(type_name(r.type_id)).or_insert((0, 0));
            e.0 += 1;
            e.1 += r.len.unwrap_or(0);
        }
        mix
    }

    /// The float type most matrix elements are stored in (block-quantized counts as f32: what its
    /// dequantized leftovers are held in).
    pub fn dominant_float(&self) -> Option<DType> {
        let mut elems: BTreeMap<u8, usize> = BTreeMap::new();
        for r in self.raw.iter().filter(|r| r.shape.len() >= 2) {
            let key = match r.type_id {
                1 => 2,
                30 => 1,
                _ => 0,
            };
            *elems.entry(key).or_default() += r.shape.iter().product::<usize>();
        }
        let (key, _) = elems.into_iter().max_by_key(|&(_, n)| n)?;
        Some([DType::F32, DType::BF16, DType::F16][key as usize])
    }

    /// Bytes held after loading: block-quantized matrices as stored when `keep_quant`, other matrices
    /// in `matrices`, vectors in `compute`.
    pub fn held_bytes(&self, keep_quant: bool, matrices: DType, compute: DType) -> usize {
        self.raw
            .iter()
            .map(|r| {
                let elems: usize = r.shape.iter().product();
                let quant = QuantType::from_ggml_id(r.type_id).filter(|_| keep_quant);
                match (quant, r.shape.len()) {
                    (Some(q), _) => elems / q.block_elems() * q.block_bytes(),
                    (None, 1) => elems * compute.size_in_bytes(),
                    (None, _) => elems * matrices.size_in_bytes(),
                }
            })
            .sum()
    }

    pub fn files(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    pub fn total_bytes(&self) -> usize {
        self.raw.iter().map(|r| r.len.unwrap_or(0)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpps_interleave() {
        // llama.cpp: w.reshape(heads, 2, hd/2, ..).swapaxes(1, 2) — file row (h, j, part) holds HF row
        // (h, part, j).
        let (heads, hd) = (2, 8);
        let hf: Vec<usize> = (0..heads * hd).collect();
        let mut file = vec![0; hf.len()];
        for h in 0..heads {
            for part in 0..2 {
                for j in 0..hd / 2 {
                    file[h * hd + 2 * j + part] = hf[h * hd + part * hd / 2 + j];
                }
            }
        }
        let order = GgufTensors::unpermute_order(heads * hd, heads);
        let back: Vec<usize> = order.iter().map(|&r| file[r]).collect();
        assert_eq!(back, hf);
        // A layout that is not per-head pairs (odd head size, ragged heads) is refused by the readers,
        // never read out of bounds: every index lies past the rows.
        for (rows, heads) in [(6, 2), (10, 4), (8, 0)] {
            assert!(GgufTensors::unpermute_order(rows, heads)
                .iter()
                .all(|&r| r >= rows));
        }
    }
}
