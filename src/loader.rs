//! Opens a checkpoint end to end: config → spec, weights → model on the device, tokenizer, generation
//! config, chat template. Also the embedded default model.

use candle_core::{DType, Device};

use crate::device::Precision;
use crate::error::Result;
use crate::model::config::HubConfig;
use crate::model::families::model_spec;
use crate::model::gguf_config::gguf_spec;
use crate::model::{Model, ModelSpec};
use crate::tokenizer::{find_chat_template, GenerationConfig, TextTokenizer};
use crate::weights::gguf::GgufModel;
use crate::weights::{EmbeddedModel, ModelSource, StoreSummary, WeightStore};

/// The tiny random-weight model compiled into the binary (used when no `--model` is given).
pub static DEFAULT_MODEL: EmbeddedModel = EmbeddedModel {
    name: "moeserve-tiny-random",
    files: &[
        (
            "config.json",
            include_bytes!("../weights/default/config.json"),
        ),
        (
            "generation_config.json",
            include_bytes!("../weights/default/generation_config.json"),
        ),
        (
            "tokenizer.json",
            include_bytes!("../weights/default/tokenizer.json"),
        ),
        (
            "tokenizer_config.json",
            include_bytes!("../weights/default/tokenizer_config.json"),
        ),
        (
            "model.safetensors.index.json",
            include_bytes!("../weights/default/model.safetensors.index.json"),
        ),
        (
            "model-00001-of-00003.safetensors",
            include_bytes!("../weights/default/model-00001-of-00003.safetensors"),
        ),
        (
            "model-00002-of-00003.safetensors",
            include_bytes!("../weights/default/model-00002-of-00003.safetensors"),
        ),
        (
            "model-00003-of-00003.safetensors",
            include_bytes!("../weights/default/model-00003-of-00003.safetensors"),
        ),
    ],
};

/// `--model DIR` (a hub checkpoint, or a directory holding one GGUF model), `--model FILE.gguf`, or
/// the embedded default model.
pub fn source_for(model: Option<&std::path::Path>) -> ModelSource {
    match model {
        Some(file) if file.is_file() => ModelSource::File(file.to_path_buf()),
        Some(dir) => ModelSource::Dir(dir.to_path_buf()),
        None => ModelSource::Embedded(&DEFAULT_MODEL),
    }
}

/// Everything loaded from a checkpoint.
pub struct LoadedModel {
    pub source: ModelSource,
    pub model: Model,
    pub tokenizer: TextTokenizer,
    pub generation: GenerationConfig,
    pub chat_template: Option<(String, &'static str)>,
    pub weights: StoreSummary,
}

/// Reads config.json (or a GGUF file's metadata) and maps it to a spec, without touching the weights.
pub fn read_spec(source: &ModelSource) -> Result<(HubConfig, ModelSpec)> {
    if let Some(model) = open_gguf(source)? {
        let (cfg, spec, _) = gguf_spec(&model)?;
        return Ok((cfg, spec));
    }
    let cfg = HubConfig::load(source)?;
    let spec = model_spec(&cfg)?;
    Ok((cfg, spec))
}

/// The source's GGUF model, when it is one.
pub fn open_gguf(source: &ModelSource) -> Result<Option<GgufModel>> {
    match source.gguf_files()? {
        Some(files) => Ok(Some(GgufModel::open(source, &files)?)),
        None => Ok(None),
    }
}

/// Tokenizer, generation ids, chat template (text and where it was found).
pub type TextSide = (
    TextTokenizer,
    GenerationConfig,
    Option<(String, &'static str)>,
);

/// A checkpoint's text side: tokenizer, generation ids and chat template (a GGUF file's own, or the hub
/// files'), without touching weights. `cfg` is config.json's value (or the GGUF metadata read as one).
pub fn text_side(source: &ModelSource, cfg: &serde_json::Value) -> Result<TextSide> {
    if let Some(model) = open_gguf(source)? {
        return Ok((
            crate::tokenizer::gguf::load(&model)?,
            crate::tokenizer::gguf::generation_config(&model)?,
            crate::tokenizer::gguf::chat_template(&model).map(|t| (t, GGUF_TEMPLATE)),
        ));
    }
    Ok((
        TextTokenizer::load(source)?,
        GenerationConfig::load(source, cfg)?,
        find_chat_template(source)?,
    ))
}

/// Where a GGUF model's chat template is reported as coming from.
pub const GGUF_TEMPLATE: &str = "tokenizer.chat_template (GGUF)";

/// How weights are obtained (`--load-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadFormat {
    /// The checkpoint's safetensors shards.
    #[default]
    Auto,
    /// Random weights made on the device from config.json alone (benchmarking real shapes).
    Dummy,
}

/// What a checkpoint declares, from its headers alone (config.json, the safetensors headers): no weight
/// is read or allocated.
pub struct Headers {
    pub cfg: HubConfig,
    pub spec: ModelSpec,
    pub summary: StoreSummary,
    /// The dtype the weight matrices would be held in (dense ones, for a quantized GGUF).
    pub matrix_dtype: DType,
    /// Bytes the weights are held in, where that is not parameters × matrix dtype (a GGUF whose
    /// block-quantized tensors stay as stored).
    pub weight_bytes: Option<u64>,
    pub compute_dtype: DType,
    /// The dtype the KV cache will be held in.
    pub kv_dtype: DType,
}

/// Reads a checkpoint's headers (see [`Headers`]).
pub fn read_headers(
    source: &ModelSource,
    device: &Device,
    precision: impl Into<Precision>,
    format: LoadFormat,
) -> Result<Headers> {
    let precision = precision.into();
    precision.check_kv(device)?;
    // A GGUF file is parsed once: its metadata gives the spec, its tensor table the store.
    if let (LoadFormat::Auto, Some(model)) = (format, open_gguf(source)?) {
        let (cfg, spec, names) = gguf_spec(&model)?;
        let store = WeightStore::open_gguf(&model, names, device, precision)?;
        return Ok(Headers {
            cfg,
            spec,
            summary: store.summary(),
            matrix_dtype: store.matrix_dtype(),
            weight_bytes: store.held_bytes_estimate(),
            compute_dtype: precision.compute,
            kv_dtype: precision.kv_dtype(),
        });
    }
    let (cfg, spec) = read_spec(source)?;
    let weight_bytes;
    let (summary, matrix_dtype) = match format {
        LoadFormat::Auto => {
            let store = WeightStore::open(source, device, precision)?;
            let dtype = store.matrix_dtype();
            weight_bytes = store
                .held_bytes_estimate()
                .or_else(|| quantized_weight_bytes(&spec, dtype, precision, device));
            (store.summary(), dtype)
        }
        LoadFormat::Dummy => {
            let dtype = crate::weights::matrix_dtype(precision, device, declared_dtype(&cfg));
            weight_bytes = quantized_weight_bytes(&spec, dtype, precision, device).or_else(|| {
                dummy_fp8_expert_bytes(&spec, dtype, precision, device, declared_fp8_block(&cfg))
            });
            let (params, _) = spec.parameter_counts();
            let summary = StoreSummary {
                shards: Vec::new(),
                tensors: 0,
                bytes: params as usize * dtype.size_in_bytes(),
                dtypes: [(format!("dummy {dtype:?}"), 0)].into_iter().collect(),
            };
            (summary, dtype)
        }
    };
    Ok(Headers {
        cfg,
        spec,
        summary,
        matrix_dtype,
        weight_bytes,
        compute_dtype: precision.compute,
        kv_dtype: precision.kv_dtype(),
    })
}

/// Bytes the weights are held in under `--quantize` (routed and shared experts, or every matrix, at the
/// type's bits per weight; the rest at `dtype`), so the memory plan does not refuse a checkpoint that fits
/// once quantized. `None` without `--quantize` (or where it does not apply: GPU, non-f32 compute).
fn quantized_weight_bytes(
    spec: &ModelSpec,
    dtype: DType,
    precision: Precision,
    device: &Device,
) -> Option<u64> {
    let q = precision
        .quantize
        .filter(|_| device.is_cpu() && precision.compute == DType::F32)?;
    let (total, _) = spec.parameter_counts();
    let h = spec.hidden_size as u64;
    let experts: u64 = spec
        .layers
        .iter()
        .map(|l| match l {
            crate::model::spec::FfnSpec::Moe(m) => {
                3 * h * m.expert_intermediate_size as u64 * m.num_experts as u64
                    + m.shared
                        .as_ref()
                        .map_or(0, |s| 3 * h * s.intermediate_size as u64)
            }
            crate::model::spec::FfnSpec::Dense { .. } => 0,
        })
        .sum();
    let covered = if q.all_linear {
        total
    } else {
        experts.min(total)
    };
    let per_block = q.ty.block_bytes() as u64;
    let quantized = covered / q.ty.block_elems() as u64 * per_block;
    Some(quantized + (total - covered) * dtype.size_in_bytes() as u64)
}

/// Loads a checkpoint onto `device` in `precision` (a `DType`: everything in that dtype).
pub fn load(
    source: &ModelSource,
    device: &Device,
    precision: impl Into<Precision>,
) -> Result<LoadedModel> {
    load_with(source, device, precision, LoadFormat::Auto)
}

/// The precision config.json declares for the weights (`torch_dtype`, or `dtype` in newer exports).
fn declared_dtype(cfg: &HubConfig) -> Option<DType> {
    match cfg.str("torch_dtype").or_else(|| cfg.str("dtype"))? {
        "bfloat16" => Some(DType::BF16),
        "float16" => Some(DType::F16),
        "float32" => Some(DType::F32),
        _ => None,
    }
}

/// Bytes a dummy FP8 checkpoint's weights take on a GPU that keeps its routed experts FP8 (one byte
/// per expert weight, scales aside; everything else at `dtype`); `None` where they are not kept so.
fn dummy_fp8_expert_bytes(
    spec: &ModelSpec,
    dtype: DType,
    precision: Precision,
    device: &Device,
    block: Option<(usize, usize)>,
) -> Option<u64> {
    block?;
    if !device.is_cuda() || !matches!(precision.compute, DType::BF16 | DType::F16) {
        return None;
    }
    let (params, _) = spec.parameter_counts();
    let experts: u64 = spec
        .layers
        .iter()
        .map(|l| match l {
            crate::model::spec::FfnSpec::Moe(m) => {
                (m.num_experts * 3 * spec.hidden_size * m.expert_intermediate_size) as u64
            }
            crate::model::spec::FfnSpec::Dense { .. } => 0,
        })
        .sum();
    Some((params - experts) * dtype.size_in_bytes() as u64 + experts)
}

/// The block size of a checkpoint that declares block-FP8 weights (`quantization_config` with
/// `quant_method: fp8` and `weight_block_size`, as DeepSeek-V3, Kimi K2 and Qwen3-FP8 ship).
fn declared_fp8_block(cfg: &HubConfig) -> Option<(usize, usize)> {
    let q = cfg.get("quantization_config")?;
    if q.get("quant_method")?.as_str()? != "fp8" {
        return None;
    }
    let block = q.get("weight_block_size")?.as_array()?;
    match block.as_slice() {
        [r, c] => Some((r.as_u64()? as usize, c.as_u64()? as usize)),
        _ => None,
    }
}

/// Loads a checkpoint, or with `LoadFormat::Dummy` builds its architecture with random weights. A dummy
/// model without tokenizer files gets a placeholder tokenizer (one `<tN>` word per id).
pub fn load_with(
    source: &ModelSource,
    device: &Device,
    precision: impl Into<Precision>,
    format: LoadFormat,
) -> Result<LoadedModel> {
    let precision = precision.into();
    precision.check_kv(device)?;
    if let (LoadFormat::Auto, Some(model)) = (format, open_gguf(source)?) {
        return load_gguf(source, &model, device, precision);
    }
    let (cfg, spec) = read_spec(source)?;
    let mut store = match format {
        LoadFormat::Auto => WeightStore::open(source, device, precision)?,
        LoadFormat::Dummy => {
            let mut store = WeightStore::dummy(device, precision, declared_dtype(&cfg));
            if let Some(block) = declared_fp8_block(&cfg) {
                store.set_dummy_fp8(block);
            }
            store
        }
    };
    let mut model = Model::load(&spec, &mut store)?;
    model.set_kv_dtype(precision.kv_dtype());
    crate::model::cpu::matmul::set_matmul_precision(precision.matmul);
    let weights = store.summary();
    store.finish()?;
    let tokenizer = match format {
        LoadFormat::Dummy if !TextTokenizer::present(source) => {
            TextTokenizer::placeholder(spec.vocab_size)?
        }
        _ => TextTokenizer::load(source)?,
    };
    let generation = GenerationConfig::load(source, &cfg.value)?;
    let chat_template = find_chat_template(source)?;
    Ok(LoadedModel {
        source: source.clone(),
        model,
        tokenizer,
        generation,
        chat_template,
        weights,
    })
}

/// Loads a GGUF model: spec from its metadata, weights (block-quantized ones in place on the CPU),
/// tokenizer, generation ids and chat template from the same file.
fn load_gguf(
    source: &ModelSource,
    model: &GgufModel,
    device: &Device,
    precision: Precision,
) -> Result<LoadedModel> {
    let (_, spec, names) = gguf_spec(model)?;
    // The tokenizer first: its build (the vocabulary as a tokenizer.json document) is transient memory,
    // which then does not add to the weights' peak.
    let tokenizer = crate::tokenizer::gguf::load(model)?;
    let mut store = WeightStore::open_gguf(model, names, device, precision)?;
    let mut decoder = Model::load(&spec, &mut store)?;
    decoder.set_kv_dtype(precision.kv_dtype());
    crate::model::cpu::matmul::set_matmul_precision(precision.matmul);
    let weights = store.summary();
    store.finish()?;
    Ok(LoadedModel {
        source: source.clone(),
        model: decoder,
        tokenizer,
        generation: crate::tokenizer::gguf::generation_config(model)?,
        chat_template: crate::tokenizer::gguf::chat_template(model).map(|t| (t, GGUF_TEMPLATE)),
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_checkpoints_are_recognised_by_their_quantization_config() {
        let cfg = |v: serde_json::Value| HubConfig::from_value("config.json".into(), v);
        let fp8 = cfg(serde_json::json!({"quantization_config":
            {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}));
        assert_eq!(declared_fp8_block(&fp8), Some((128, 128)));
        let other = cfg(serde_json::json!({"quantization_config":
            {"quant_method": "awq", "weight_block_size": [128, 128]}}));
        assert_eq!(declared_fp8_block(&other), None);
        assert_eq!(declared_fp8_block(&cfg(serde_json::json!({}))), None);
    }
}
