//! Writes a random-weight checkpoint from a config alone (the tensors `--load-format dummy` makes), as
//! the hub lays one out: config.json, model.safetensors, a placeholder tokenizer.json (token `N` is the
//! word `<tN>`). For measuring what loading a real file costs (peak RSS, load time) without downloading
//! one, e.g. the bench-shaped model in bf16 and f32:
//!
//!     cargo run --release --example dummy_checkpoint -- configs/bench-qwen3-moe-1b weights/bench-bf16 bf16
//!     cargo run --release --example dummy_checkpoint -- configs/bench-qwen3-moe-1b weights/bench-f32 f32

use candle_core::{DType, Device};
use moeserve::model::Model;
use moeserve::weights::{ModelSource, WeightStore};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, out, dtype] = &args[..] else {
        anyhow::bail!("usage: dummy_checkpoint CONFIG_DIR OUT_DIR bf16|f16|f32");
    };
    let dtype = match dtype.as_str() {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => anyhow::bail!("unknown dtype {other}"),
    };
    let source = ModelSource::Dir(config.into());
    let (cfg, spec) = moeserve::loader::read_spec(&source)?;
    // Everything made in `dtype` (routers in f32, as the model asks for them).
    let mut store = WeightStore::dummy_keeping(&Device::Cpu, dtype.into(), None);
    let _model = Model::load(&spec, &mut store)?;
    let tensors: std::collections::HashMap<String, candle_core::Tensor> =
        store.take_kept().into_iter().collect();
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    let mut value = cfg.value.clone();
    value["torch_dtype"] = serde_json::json!(match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    });
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&value)?,
    )?;
    std::fs::write(
        out.join("tokenizer.json"),
        moeserve::tokenizer::TextTokenizer::placeholder_json(spec.vocab_size),
    )?;
    println!("{}: {} tensors", out.display(), tensors.len());
    Ok(())
}
