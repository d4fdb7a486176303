//! The checkpoint's tensors: a single `model.safetensors` or an index with shards, memory-mapped, looked up
//! by name, shape-checked, converted to the compute dtype (weight matrices: to the matrix dtype, which on
//! the CPU is by default the checkpoint's own precision) and placed on the device one tensor at a time.
//! Every tensor the model takes is recorded, so that tensors nobody used are reported as an error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use super::gguf::tensors::{GgufTensors, NameMap};
use super::gguf::GgufModel;
use super::matrix::{expand_block_scales, Fp8Blocks, Matrix};
use super::quant::QuantMatrix;
use super::source::{FileBytes, ModelSource};
use crate::device::{MatrixPrecision, Precision, Quantize};
use crate::error::{Error, Result};

pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    file: String,
    path: PathBuf,
    bytes: FileBytes,
    data_start: usize,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    offsets: (usize, usize),
}

/// Summary of the stored tensors, for `inspect`.
#[derive(Debug, Clone)]
pub struct StoreSummary {
    pub shards: Vec<String>,
    pub tensors: usize,
    pub bytes: usize,
    /// Stored dtypes with their tensor counts.
    pub dtypes: BTreeMap<String, usize>,
}

/// The dtype weight matrices are held in: what `precision` asks where the CPU kernels serve it (f32
/// compute on the CPU, matrices in f32, bf16 or f16), else the compute dtype.
pub fn matrix_dtype(precision: Precision, device: &Device, stored: Option<DType>) -> DType {
    let compute = precision.compute;
    if !device.is_cpu() || compute != DType::F32 {
        return compute;
    }
    let wanted = match precision.matrices {
        MatrixPrecision::Compute => compute,
        MatrixPrecision::Fixed(d) => d,
        MatrixPrecision::Stored => stored.unwrap_or(compute),
    };
    match wanted {
        DType::F32 | DType::BF16 | DType::F16 => wanted,
        _ => compute,
    }
}

/// Whether block-FP8 matrices stay FP8: where the CPU kernels read them (f32 compute, weights as stored).
fn keeps_fp8(precision: Precision, device: &Device) -> bool {
    device.is_cpu()
        && precision.compute == DType::F32
        && precision.matrices == MatrixPrecision::Stored
}

/// Whether block-FP8 routed experts stay FP8: on a GPU computing in bf16 or f16 (the FP8 expert kernels).
fn keeps_fp8_experts(precision: Precision, device: &Device) -> bool {
    device.is_cuda() && matches!(precision.compute, DType::BF16 | DType::F16)
}

/// `--quantize` where it applies: the CPU with f32 compute (the quantized kernels' home).
fn quantize_on(precision: Precision, device: &Device) -> Option<Quantize> {
    precision
        .quantize
        .filter(|_| device.is_cpu() && precision.compute == DType::F32)
}

/// Whether `--quantize` covers a matrix, by its decoder name: routed and shared experts always; with
/// `all_linear` every other matrix too — attention, dense MLPs, the lm head and the embeddings, as
/// llama.cpp's quantizer does (routers are read in f32 and never come here).
fn quantize_covers(q: &Quantize, name: &str) -> bool {
    q.all_linear || name.contains(".experts.") || name.contains(".shared_expert")
}

/// The precision most of a checkpoint's matrix elements are stored in (block-FP8 counts as bf16, what
/// its dequantized weights are held in).
fn dominant_matrix_dtype(entries: &HashMap<String, Entry>) -> Option<DType> {
    let mut elems: BTreeMap<u8, usize> = BTreeMap::new();
    for e in entries.values().filter(|e| e.shape.len() == 2) {
        let key = match e.dtype {
            Dtype::F32 => 0,
            Dtype::BF16 | Dtype::F8_E4M3 => 1,
            Dtype::F16 => 2,
            _ => continue,
        };
        *elems.entry(key).or_default() += e.shape.iter().product::<usize>();
    }
    let (key, _) = elems.into_iter().max_by_key(|&(_, n)| n)?;
    Some([DType::F32, DType::BF16, DType::F16][key as usize])
}

/// Name → tensor access over all shards of a checkpoint.
pub struct WeightStore {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    taken: HashSet<String>,
    device: Device,
    /// The compute dtype (activations, norms, biases, attention, KV cache).
    dtype: DType,
    /// The dtype weight matrices are held in (see [`Precision`]).
    matrices: DType,
    /// Block-FP8 matrices may stay FP8 (CPU, f32 compute, weights as stored).
    keep_fp8: bool,
    /// Block-FP8 routed experts stay FP8 (a GPU with bf16/f16 compute: its FP8 expert kernels).
    fp8_experts_as_stored: bool,
    /// `--load-format dummy` of a checkpoint that declares block-FP8 weights: its experts are made up as
    /// FP8 in blocks of this size.
    dummy_fp8_block: Option<(usize, usize)>,
    progress: indicatif::ProgressBar,
    /// `--load-format dummy`: every requested tensor is made up on the device (no files).
    dummy: Option<DummyStats>,
    /// A GGUF model's tensors (then `shards` and `entries` are empty).
    gguf: Option<GgufTensors>,
    /// `--quantize`, where the CPU kernels read quantized matrices (CPU, f32 compute).
    quantize: Option<Quantize>,
    /// Where quantized matrices are placed (huge-page memory, packed).
    arena: super::quant::Arena,
}

/// What a dummy store handed out (for `inspect` and the load log).
#[derive(Debug, Default, Clone)]
struct DummyStats {
    tensors: usize,
    bytes: usize,
    /// Every tensor handed out, by name, when asked to keep them (to write a dummy checkpoint).
    kept: Option<Vec<(String, Tensor)>>,
}

impl WeightStore {
    /// Opens `model.safetensors` or `model.safetensors.index.json` and its shards; validates every header.
    pub fn open(source: &ModelSource, device: &Device, precision: Precision) -> Result<Self> {
        let dtype = precision.compute;
        let files: Vec<(String, Option<Vec<String>>)> = if source.exists(INDEX_FILE) {
            let index = source
                .read_json(INDEX_FILE)?
                .ok_or_else(|| Error::MissingShard {
                    path: source.path_of(INDEX_FILE),
                })?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Config {
                    path: source.path_of(INDEX_FILE),
                    message: "no \"weight_map\" object".into(),
                })?;
            let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| Error::Config {
                    path: source.path_of(INDEX_FILE),
                    message: format!("weight_map entry {name} is not a file name"),
                })?;
                by_file
                    .entry(file.to_owned())
                    .or_default()
                    .push(name.clone());
            }
            by_file
                .into_iter()
                .map(|(f, names)| (f, Some(names)))
                .collect()
        } else if source.exists(SINGLE_FILE) {
            vec![(SINGLE_FILE.to_owned(), None)]
        } else {
            return Err(Error::MissingShard {
                path: source.path_of(SINGLE_FILE),
            });
        };

        let mut shards = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        for (file, listed) in files {
            let path = source.path_of(&file);
            let bytes = source
                .open(&file)?
                .ok_or_else(|| Error::MissingShard { path: path.clone() })?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&bytes).map_err(|e| Error::BadShard {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let shard_id = shards.len();
            let mut present = HashSet::new();
            for (name, info) in metadata.tensors() {
                present.insert(name.clone());
                entries.insert(
                    name,
                    Entry {
                        shard: shard_id,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        offsets: info.data_offsets,
                    },
                );
            }
            if let Some(listed) = listed {
                if let Some(missing) = listed.iter().find(|n| !present.contains(*n)) {
                    return Err(Error::MissingTensor {
                        path,
                        tensor: missing.clone(),
                    });
                }
            }
            shards.push(Shard {
                file,
                path,
                bytes,
                data_start: 8 + header_len,
            });
        }
        let progress = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(entries.len() as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "loading weights {bar:40} {pos}/{len} tensors {elapsed}",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let stored = dominant_matrix_dtype(&entries);
        Ok(Self {
            shards,
            entries,
            taken: HashSet::new(),
            device: device.clone(),
            dtype,
            matrices: matrix_dtype(precision, device, stored),
            keep_fp8: keeps_fp8(precision, device),
            fp8_experts_as_stored: keeps_fp8_experts(precision, device),
            dummy_fp8_block: None,
            progress,
            dummy: None,
            gguf: None,
            quantize: quantize_on(precision, device),
            arena: Default::default(),
        })
    }

    /// The tensors of a GGUF model, under the decoder's names (`names`). Block-quantized matrices stay
    /// in the mapped file where the CPU kernels read them (CPU, f32 compute); elsewhere they are
    /// dequantized to the matrix dtype.
    pub fn open_gguf(
        model: &GgufModel,
        names: NameMap,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let tensors = GgufTensors::new(model, names)?;
        let mut store = Self::dummy(device, precision, tensors.dominant_float());
        store.dummy = None;
        store.matrices = matrix_dtype(precision, device, tensors.dominant_float());
        store.keep_fp8 = keeps_fp8(precision, device);
        store.fp8_experts_as_stored = false;
        store.gguf = Some(tensors);
        Ok(store)
    }

    /// Bytes the weights will be held in where that is not parameters × the matrix dtype: a GGUF model's
    /// quantized tensors as stored (where kept), float ones at the matrix dtype or compute dtype; a
    /// block-FP8 checkpoint's FP8 matrices as stored (where kept). `None` otherwise.
    pub fn held_bytes_estimate(&self) -> Option<u64> {
        if let Some(g) = &self.gguf {
            return Some(g.held_bytes(self.keeps_quant(), self.matrices, self.dtype) as u64);
        }
        if !self.keep_fp8 && !self.fp8_experts_as_stored {
            return None;
        }
        // Block-FP8 matrices stay one byte per weight plus their f32 scales (on a GPU the routed experts
        // only); the rest at the matrix dtype.
        let mut fp8 = false;
        let mut bytes = 0u64;
        for (name, e) in &self.entries {
            let n = e.shape.iter().product::<usize>() as u64;
            let scaled = self.entries.contains_key(&format!("{name}_scale_inv"));
            let kept = self.keep_fp8 || name.contains(".experts.");
            bytes += if e.dtype == Dtype::F8_E4M3 && e.shape.len() == 2 && scaled && kept {
                fp8 = true;
                n
            } else if name.ends_with("_scale_inv") {
                4 * n
            } else {
                n * self.matrices.size_in_bytes() as u64
            };
        }
        fp8.then_some(bytes)
    }

    /// Takes the stacked, block-quantized expert projections of a GGUF MoE layer as stored (for the GPU's
    /// fused kernels): `expert0` are expert 0's decoder names of (gate, up, down). `None` (nothing taken)
    /// unless all three are block-quantized stacked tensors of `experts` experts of a type the GPU takes.
    #[cfg(feature = "cuda")]
    #[allow(clippy::type_complexity)]
    pub fn take_stacked_quant(
        &mut self,
        expert0: &[String; 3],
        experts: usize,
    ) -> Result<Option<[(super::QuantType, [usize; 3], &[u8]); 3]>> {
        let usable = match &self.gguf {
            Some(g) => expert0.iter().all(|n| {
                g.stacked_quant(n, experts)
                    .is_some_and(|s| crate::model::moe::cuda_quant_experts::supports(s.0))
            }),
            None => false,
        };
        if !usable {
            return Ok(None);
        }
        if let Some(g) = &self.gguf {
            let taken: Vec<String> = expert0.iter().flat_map(|n| g.names_sharing(n)).collect();
            self.progress.inc(taken.len() as u64);
            self.taken.extend(taken);
        }
        let Some(g) = &self.gguf else {
            return Ok(None);
        };
        let three: Vec<_> = expert0
            .iter()
            .filter_map(|n| g.stacked_quant(n, experts))
            .collect();
        Ok(<[_; 3]>::try_from(three).ok())
    }

    /// A GGUF block-quantized projection uploaded to the GPU as stored (candle's `QMatMul`); not the
    /// embeddings (looked up by row, held dense).
    #[cfg(feature = "cuda")]
    fn gpu_quant(&mut self, name: &str, shape: &[usize]) -> Result<Option<Matrix>> {
        use candle_core::quantized::{QMatMul, QStorage, QTensor};
        if !self.device.is_cuda() || name.contains("embed_tokens") {
            return Ok(None);
        }
        let Some(q) = self
            .gguf
            .as_ref()
            .map(|g| g.quant(name, shape))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        let storage = QStorage::from_data(
            std::borrow::Cow::Borrowed(q.data()),
            &self.device,
            q.ty().ggml(),
        )?;
        let tensor = QTensor::new(storage, (q.rows(), q.cols()))?;
        self.taken.insert(name.to_owned());
        self.progress.inc(1);
        Ok(Some(Matrix::Gpu(std::sync::Arc::new(
            super::matrix::GpuQuant {
                matmul: QMatMul::from_qtensor(tensor)?,
                rows: q.rows(),
                cols: q.cols(),
                bytes: q.byte_len(),
            },
        ))))
    }

    /// Whether quantized matrices are handed out as they are stored.
    fn keeps_quant(&self) -> bool {
        self.keep_fp8
    }

    /// The dtype weight matrices are held in.
    pub fn matrix_dtype(&self) -> DType {
        self.matrices
    }

    /// Takes a block-FP8 matrix as stored, when this store keeps FP8 (see [`Precision`]) and `name` is one;
    /// `None` otherwise (take it with [`Self::get_matrix`], dequantized).
    pub fn get_fp8(&mut self, name: &str, shape: &[usize]) -> Result<Option<Fp8Blocks>> {
        let keep = self.keep_fp8;
        self.take_fp8(name, shape, keep)
    }

    /// Whether this store hands out block-FP8 routed experts as stored for a GPU's FP8 kernels (see
    /// [`Self::get_fp8_expert`]).
    pub fn fp8_experts_as_stored(&self) -> bool {
        self.fp8_experts_as_stored && self.gguf.is_none()
    }

    /// Takes a routed expert's block-FP8 matrix as stored where the CPU kernels or a GPU's FP8 expert
    /// kernels read it; `None` otherwise.
    pub fn get_fp8_expert(&mut self, name: &str, shape: &[usize]) -> Result<Option<Fp8Blocks>> {
        let keep = self.keep_fp8 || self.fp8_experts_as_stored;
        self.take_fp8(name, shape, keep)
    }

    /// Makes a dummy store's routed experts block-FP8 in `block`-sized blocks (a checkpoint whose config
    /// declares FP8 weights), where its device keeps them so.
    pub fn set_dummy_fp8(&mut self, block: (usize, usize)) {
        if self.dummy.is_some() && self.fp8_experts_as_stored {
            self.dummy_fp8_block = Some(block);
        }
    }

    /// The block size of a dummy store's FP8 experts (see [`Self::set_dummy_fp8`]).
    pub fn dummy_fp8_block(&self) -> Option<(usize, usize)> {
        self.dummy_fp8_block
    }

    fn take_fp8(&mut self, name: &str, shape: &[usize], keep: bool) -> Result<Option<Fp8Blocks>> {
        if self.gguf.is_some() {
            return Ok(None);
        }
        let scale_name = format!("{name}_scale_inv");
        let is_fp8 = self
            .entries
            .get(name)
            .is_some_and(|e| e.dtype == Dtype::F8_E4M3 && e.shape == shape && shape.len() == 2);
        if !keep || !is_fp8 || !self.entries.contains_key(&scale_name) {
            return Ok(None);
        }
        let (rows, cols) = (shape[0], shape[1]);
        let scale_shape = self.shape_of(&scale_name).map(<[usize]>::to_vec);
        let Some([sr, sc]) = scale_shape
            .as_deref()
            .map(|s| [s[0], s.get(1).copied().unwrap_or(0)])
        else {
            return Ok(None);
        };
        if sr == 0 || sc == 0 {
            return Err(Error::WrongShape {
                path: self.where_missing(),
                tensor: scale_name,
                expected: vec![rows.div_ceil(128), cols.div_ceil(128)],
                found: vec![sr, sc],
            });
        }
        let scales = self
            .get_as(&scale_name, &[sr, sc], DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let entry = &self.entries[name];
        let shard = &self.shards[entry.shard];
        let (start, end) = (
            shard.data_start + entry.offsets.0,
            shard.data_start + entry.offsets.1,
        );
        let bytes = shard.bytes[start..end].to_vec();
        shard.bytes.release(start, end);
        self.taken.insert(name.to_owned());
        self.progress.inc(1);
        Ok(Some(Fp8Blocks {
            bytes,
            scales,
            rows,
            cols,
            block: (rows.div_ceil(sr), cols.div_ceil(sc)),
        }))
    }

    /// Takes a weight matrix (projection, expert, embedding, lm head): block-FP8 or block-quantized as
    /// stored where the CPU kernels read it, else dense in the matrix dtype.
    pub fn get_matrix(&mut self, name: &str, shape: &[usize]) -> Result<Matrix> {
        if let Some(b) = self.get_fp8(name, shape)? {
            return Ok(Matrix::Fp8(std::sync::Arc::new(b)));
        }
        if let (Some(g), true) = (&self.gguf, self.keeps_quant()) {
            if let Some(q) = g.quant(name, shape)? {
                self.taken.insert(name.to_owned());
                self.progress.inc(1);
                let q = q.into_kernel_layout_in(Some(&mut self.arena));
                return Ok(Matrix::Quant(std::sync::Arc::new(q)));
            }
        }
        #[cfg(feature = "cuda")]
        if let Some(m) = self.gpu_quant(name, shape)? {
            return Ok(m);
        }
        if let Some(q) = self
            .quantize
            .filter(|q| shape.len() == 2 && quantize_covers(q, name))
        {
            let (rows, cols) = (shape[0], shape[1]);
            if q.ty.row_bytes(cols).is_some() {
                let values = self
                    .get_as(name, shape, DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let m = QuantMatrix::quantize(q.ty, rows, cols, &values).map_err(|message| {
                    Error::BadShard {
                        path: self.where_missing(),
                        message: format!("quantizing {name}: {message}"),
                    }
                })?;
                let m = m.into_kernel_layout_in(Some(&mut self.arena));
                return Ok(Matrix::Quant(std::sync::Arc::new(m)));
            }
            // Rows that are not whole blocks stay as held (llama.cpp falls back the same way).
        }
        Ok(Matrix::Dense(self.get_as(name, shape, self.matrices)?))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.gguf {
            Some(g) => g.contains(name),
            None => self.entries.contains_key(name),
        }
    }

    /// Where a tensor would be reported as missing: the index when there is one, else the single file.
    fn where_missing(&self) -> PathBuf {
        if let Some(g) = &self.gguf {
            return g.path_of("");
        }
        match self.shards.first() {
            Some(s) if self.shards.len() == 1 && s.file == SINGLE_FILE => s.path.clone(),
            Some(s) => s.path.with_file_name(INDEX_FILE),
            None => PathBuf::from(INDEX_FILE),
        }
    }

    /// Stored shape of a tensor, if present.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The scale block (rows, columns) of a stored block-FP8 matrix, without taking it; `None` where
    /// `name` is not one (or is a GGUF tensor).
    pub fn fp8_block_of(&self, name: &str) -> Option<(usize, usize)> {
        let e = self.entries.get(name)?;
        let scale = self.entries.get(&format!("{name}_scale_inv"))?;
        match (e.dtype, e.shape.as_slice(), scale.shape.as_slice()) {
            (Dtype::F8_E4M3, [rows, cols], [sr, sc]) if *sr > 0 && *sc > 0 => {
                Some((rows.div_ceil(*sr), cols.div_ceil(*sc)))
            }
            _ => None,
        }
    }

    /// Takes a tensor with an expected shape, in the store's compute dtype.
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_as(name, shape, self.dtype)
    }

    /// A store without files: each tensor the model asks for is random, made directly on `device` (like
    /// vLLM's `--load-format dummy`), so real shapes can be benchmarked from config.json alone. Norm
    /// weights are ones, biases zeros, matrices N(0, 1/fan_in) so activations keep their scale.
    /// `stored` is the checkpoint's declared precision (`torch_dtype`), which `Stored` matrices take.
    pub fn dummy(device: &Device, precision: Precision, stored: Option<DType>) -> Self {
        Self {
            shards: Vec::new(),
            entries: HashMap::new(),
            taken: HashSet::new(),
            device: device.clone(),
            dtype: precision.compute,
            matrices: matrix_dtype(precision, device, stored),
            keep_fp8: false,
            fp8_experts_as_stored: keeps_fp8_experts(precision, device),
            dummy_fp8_block: None,
            progress: indicatif::ProgressBar::hidden(),
            dummy: Some(DummyStats::default()),
            gguf: None,
            quantize: quantize_on(precision, device),
            arena: Default::default(),
        }
    }

    fn make_dummy(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let leaf = name.rsplit('.').nth(1).unwrap_or("");
        let is_norm = name.ends_with(".weight") && (leaf.contains("norm") || leaf == "ln");
        let t = if shape.len() == 1 && is_norm {
            Tensor::ones(shape, dtype, &self.device)?
        } else if shape.len() == 1 {
            Tensor::zeros(shape, dtype, &self.device)?
        } else {
            let fan_in = shape.last().copied().unwrap_or(1).max(1) as f64;
            let std = if name.contains("embed_tokens") {
                1.0
            } else {
                fan_in.powf(-0.5)
            };
            Tensor::randn(0f32, std as f32, shape, &self.device)?.to_dtype(dtype)?
        };
        if let Some(stats) = &mut self.dummy {
            stats.tensors += 1;
            stats.bytes += t.elem_count() * dtype.size_in_bytes();
            if let Some(kept) = &mut stats.kept {
                kept.push((name.to_owned(), t.clone()));
            }
        }
        Ok(t)
    }

    /// Takes a tensor with an expected shape, converted to `dtype`.
    pub fn get_as(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if self.dummy.is_some() {
            return self.make_dummy(name, shape, dtype);
        }
        if let Some(g) = &self.gguf {
            let t = g.dense(name, shape, dtype, &self.device)?;
            self.taken.insert(name.to_owned());
            self.progress.inc(1);
            return Ok(t);
        }
        let entry = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.where_missing(),
            tensor: name.to_owned(),
        })?;
        let shard = &self.shards[entry.shard];
        if entry.shape != shape {
            return Err(Error::WrongShape {
                path: shard.path.clone(),
                tensor: name.to_owned(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let stored = match entry.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            // Block-quantized FP8 (DeepSeek-V3, Kimi K2): dequantized with its `_scale_inv` below.
            Dtype::F8_E4M3 if self.entries.contains_key(&format!("{name}_scale_inv")) => {
                DType::F8E4M3
            }
            other => {
                return Err(Error::UnsupportedDtype {
                    path: shard.path.clone(),
                    tensor: name.to_owned(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let (start, end) = (
            shard.data_start + entry.offsets.0,
            shard.data_start + entry.offsets.1,
        );
        let tensor =
            Tensor::from_raw_buffer(&shard.bytes[start..end], stored, shape, &self.device)?;
        shard.bytes.release(start, end);
        let tensor = if stored == DType::F8E4M3 {
            self.dequantize_fp8(name, tensor)?
        } else {
            tensor
        }
        .to_dtype(dtype)?;
        self.taken.insert(name.to_owned());
        self.progress.inc(1);
        Ok(tensor)
    }

    /// `w * scale_inv` with one scale per block (128×128 in DeepSeek-V3's `weight_block_size`), as the
    /// reference `weight_dequant` computes it, in f32.
    fn dequantize_fp8(&mut self, name: &str, w: Tensor) -> Result<Tensor> {
        let scale_name = format!("{name}_scale_inv");
        let (rows, cols) = w.dims2()?;
        let scale_shape = self
            .shape_of(&scale_name)
            .map(|s| s.to_vec())
            .unwrap_or_default();
        let path = self.where_missing();
        let [sr, sc] = scale_shape[..] else {
            return Err(Error::WrongShape {
                path,
                tensor: scale_name,
                expected: vec![0, 0],
                found: scale_shape,
            });
        };
        let scale = self.get_as(&scale_name, &[sr, sc], DType::F32)?;
        Ok((w.to_dtype(DType::F32)? * expand_block_scales(&scale, rows, cols)?)?)
    }

    /// A dummy store that also keeps every tensor it hands out (see [`Self::take_kept`]).
    pub fn dummy_keeping(device: &Device, precision: Precision, stored: Option<DType>) -> Self {
        let mut store = Self::dummy(device, precision, stored);
        if let Some(stats) = &mut store.dummy {
            stats.kept = Some(Vec::new());
        }
        store
    }

    /// The tensors a keeping dummy store handed out, by name.
    pub fn take_kept(&mut self) -> Vec<(String, Tensor)> {
        self.dummy
            .as_mut()
            .and_then(|s| s.kept.take())
            .unwrap_or_default()
    }

    /// Marks tensors as deliberately skipped (e.g. multi-token-prediction layers).
    pub fn skip_where(&mut self, skip: impl Fn(&str) -> bool) {
        let names: Vec<String> = match &self.gguf {
            Some(g) => g
                .names()
                .chain(g.unmapped())
                .filter(|n| skip(n))
                .cloned()
                .collect(),
            None => self.entries.keys().filter(|n| skip(n)).cloned().collect(),
        };
        self.progress.inc(names.len() as u64);
        self.taken.extend(names);
    }

    /// Ends loading: fails when the checkpoint holds tensors the model did not use.
    pub fn finish(self) -> Result<()> {
        self.progress.finish_and_clear();
        if self.dummy.is_some() {
            return Ok(());
        }
        let mut unused: Vec<&String> = match &self.gguf {
            Some(g) => g
                .names()
                .chain(g.unmapped())
                .filter(|n| !self.taken.contains(*n))
                .collect(),
            None => self
                .entries
                .keys()
                .filter(|n| !self.taken.contains(*n))
                .collect(),
        };
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let shown: Vec<&str> = unused.iter().take(5).map(|s| s.as_str()).collect();
        let more = if unused.len() > 5 {
            format!(" and {} more", unused.len() - 5)
        } else {
            String::new()
        };
        Err(Error::UnexpectedTensors {
            path: self.where_missing(),
            names: format!("{}{more}", shown.join(", ")),
        })
    }

    pub fn summary(&self) -> StoreSummary {
        if let Some(stats) = &self.dummy {
            return StoreSummary {
                shards: Vec::new(),
                tensors: stats.tensors,
                bytes: stats.bytes,
                dtypes: BTreeMap::from([(format!("dummy {:?}", self.dtype), stats.tensors)]),
            };
        }
        if let Some(g) = &self.gguf {
            let mix = g.type_mix();
            return StoreSummary {
                shards: g.files(),
                tensors: mix.values().map(|(n, _)| n).sum(),
                bytes: g.total_bytes(),
                dtypes: mix.into_iter().map(|(t, (n, _))| (t, n)).collect(),
            };
        }
        let mut dtypes = BTreeMap::new();
        let mut bytes = 0;
        for e in self.entries.values() {
            *dtypes.entry(format!("{:?}", e.dtype)).or_insert(0) += 1;
            bytes += e.offsets.1 - e.offsets.0;
        }
        StoreSummary {
            shards: self.shards.iter().map(|s| s.file.clone()).collect(),
            tensors: self.entries.len(),
            bytes,
            dtypes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn fp8_block_quantized_weights_are_dequantized() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            path: "tmp".into(),
            source,
        })?;
        let dev = Device::Cpu;
        // 3x5 weight, blocks of 2x2 → scale_inv is 2x3.
        let w = Tensor::new(
            &[
                [1f32, -2., 0.5, 4., 1.],
                [0.25, 3., -1., 2., -4.],
                [1.5, 1., 2., -0.5, 8.],
            ],
            &dev,
        )?;
        let scale = Tensor::new(&[[1f32, 2., 0.5], [4., 0.25, 1.]], &dev)?;
        let mut tensors = HashMap::new();
        tensors.insert("x.weight".to_owned(), w.to_dtype(DType::F8E4M3)?);
        tensors.insert("x.weight_scale_inv".to_owned(), scale);
        candle_core::safetensors::save(&tensors, dir.path().join(SINGLE_FILE))?;
        let mut store = WeightStore::open(
            &ModelSource::Dir(dir.path().to_path_buf()),
            &dev,
            DType::F32.into(),
        )?;
        assert_eq!(store.fp8_block_of("x.weight"), Some((2, 2)));
        assert_eq!(store.fp8_block_of("x.weight_scale_inv"), None);
        assert!(
            !store.fp8_experts_as_stored(),
            "the CPU keeps FP8 by its own rule"
        );
        let got = store.get("x.weight", &[3, 5])?.to_vec2::<f32>()?;
        // All values are exact in e4m3; each is multiplied by its block's scale.
        let expected = [
            [1f32, -2., 1., 8., 0.5],
            [0.25, 3., -2., 4., -2.],
            [6., 4., 0.5, -0.125, 8.],
        ];
        assert_eq!(got, expected);
        store.finish()?;
        // Held as stored (the CPU, weights at their stored precision): the bytes and scales, planned
        // at one byte per weight plus four per scale, and the same values when dequantized.
        let stored = Precision {
            matrices: MatrixPrecision::Stored,
            ..DType::F32.into()
        };
        let mut store =
            WeightStore::open(&ModelSource::Dir(dir.path().to_path_buf()), &dev, stored)?;
        assert_eq!(store.held_bytes_estimate(), Some(15 + 4 * 6));
        let m = store.get_matrix("x.weight", &[3, 5])?;
        assert!(matches!(m, Matrix::Fp8(_)), "{m:?}");
        assert_eq!(m.byte_len(), 15 + 4 * 6);
        assert_eq!(m.to_f32(&dev)?.to_vec2::<f32>()?, expected);
        store.finish()
    }

    #[test]
    fn matrices_keep_the_stored_precision_on_the_cpu_only_with_f32_compute() {
        let stored = Precision {
            compute: DType::F32,
            matrices: MatrixPrecision::Stored,
            quantize: None,
            kv_cache: None,
            matmul: Default::default(),
        };
        let cpu = &Device::Cpu;
        assert_eq!(matrix_dtype(stored, cpu, Some(DType::BF16)), DType::BF16);
        assert_eq!(matrix_dtype(stored, cpu, Some(DType::F16)), DType::F16);
        assert_eq!(matrix_dtype(stored, cpu, None), DType::F32);
        assert_eq!(
            matrix_dtype(DType::BF16.into(), cpu, Some(DType::F32)),
            DType::BF16,
            "bf16 compute: everything bf16"
        );
        let fixed = Precision {
            compute: DType::F32,
            matrices: MatrixPrecision::Fixed(DType::F16),
            quantize: None,
            kv_cache: None,
            matmul: Default::default(),
        };
        assert_eq!(matrix_dtype(fixed, cpu, Some(DType::BF16)), DType::F16);
    }
}
