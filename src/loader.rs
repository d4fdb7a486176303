//! Opens a checkpoint end to end: config → spec, weights → model on the device, tokenizer, generation
//! config, chat template. Also the embedded default model.

use candle_core::{DType, Device};

use crate::device::Precision;
use crate::error::Result;
use crate::model::config::{model_spec, HubConfig};
use crate::model::{Model, ModelSpec};
use crate::tokenizer::{find_chat_template, GenerationConfig, TextTokenizer};
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

/// `--model DIR`, or the embedded default model.
pub fn source_for(model: Option<&std::path::Path>) -> ModelSource {
    match model {
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

/// Reads config.json and maps it to a spec, without touching the weights.
pub fn read_spec(source: &ModelSource) -> Result<(HubConfig, ModelSpec)> {
    let cfg = HubConfig::load(source)?;
    let spec = model_spec(&cfg)?;
    Ok((cfg, spec))
}

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
    /// The dtype the weight matrices would be held in.
    pub matrix_dtype: DType,
    pub compute_dtype: DType,
}

/// Reads a checkpoint's headers (see [`Headers`]).
pub fn read_headers(
    source: &ModelSource,
    device: &Device,
    precision: impl Into<Precision>,
    format: LoadFormat,
) -> Result<Headers> {
    let precision = precision.into();
    let (cfg, spec) = read_spec(source)?;
    let (summary, matrix_dtype) = match format {
        LoadFormat::Auto => {
            let store = WeightStore::open(source, device, precision)?;
            (store.summary(), store.matrix_dtype())
        }
        LoadFormat::Dummy => {
            let dtype = crate::weights::matrix_dtype(precision, device, declared_dtype(&cfg));
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
        compute_dtype: precision.compute,
    })
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

/// Loads a checkpoint, or with `LoadFormat::Dummy` builds its architecture with random weights. A dummy
/// model without tokenizer files gets a placeholder tokenizer (one `<tN>` word per id).
pub fn load_with(
    source: &ModelSource,
    device: &Device,
    precision: impl Into<Precision>,
    format: LoadFormat,
) -> Result<LoadedModel> {
    let precision = precision.into();
    let (cfg, spec) = read_spec(source)?;
    let mut store = match format {
        LoadFormat::Auto => WeightStore::open(source, device, precision)?,
        LoadFormat::Dummy => WeightStore::dummy(device, precision, declared_dtype(&cfg)),
    };
    let model = Model::load(&spec, &mut store)?;
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
