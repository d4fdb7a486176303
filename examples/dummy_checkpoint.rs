//! Writes a random-weight checkpoint from a config alone (the tensors `--load-format dummy` makes), as
//! the hub lays one out: config.json, model.safetensors, a placeholder tokenizer.json (token `N` is the
//! word `<tN>`). For measuring what loading a real file costs (peak RSS, load time) without downloading
//! one, e.g. the bench-shaped model in bf16 and f32:
//!
//!     cargo run --release --example dummy_checkpoint -- configs/bench-qwen3-moe-1b weights/bench-bf16 bf16
//!     cargo run --release --example dummy_checkpoint -- configs/bench-qwen3-moe-1b weights/bench-f32 f32
//!
//! `fp8` writes the linear weights as DeepSeek-V3 does (e4m3, one power-of-two `weight_scale_inv` per
//! 128 × 128 block; embeddings, lm head, norms and routers in bf16).

use candle_core::{DType, Device};
use moeserve::model::Model;
use moeserve::weights::{ModelSource, WeightStore};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, out, dtype] = &args[..] else {
        anyhow::bail!("usage: dummy_checkpoint CONFIG_DIR OUT_DIR bf16|f16|f32|fp8");
    };
    let fp8 = dtype == "fp8";
    let dtype = match dtype.as_str() {
        "bf16" | "fp8" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => anyhow::bail!("unknown dtype {other}"),
    };
    let source = ModelSource::Dir(config.into());
    let (cfg, spec) = moeserve::loader::read_spec(&source)?;
    // Everything made in `dtype` (routers in f32, as the model asks for them).
    let mut store = WeightStore::dummy_keeping(&Device::Cpu, dtype.into(), None);
    let _model = Model::load(&spec, &mut store)?;
    let mut tensors: std::collections::HashMap<String, candle_core::Tensor> =
        store.take_kept().into_iter().collect();
    if fp8 {
        tensors = tensors
            .into_iter()
            .flat_map(|(name, t)| quantize_fp8(name, t))
            .collect();
    }
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    let mut value = cfg.value.clone();
    if fp8 {
        value["quantization_config"] = serde_json::json!({
            "quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
            "activation_scheme": "dynamic"
        });
    }
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

/// A linear weight as e4m3 with one power-of-two scale per 128 × 128 block (other tensors unchanged).
fn quantize_fp8(name: String, t: candle_core::Tensor) -> Vec<(String, candle_core::Tensor)> {
    use candle_core::Tensor;
    let linear = t.rank() == 2
        && name.ends_with(".weight")
        && !["embed_tokens", "lm_head", "norm", "gate.weight"]
            .iter()
            .any(|s| name.contains(s));
    if !linear {
        return vec![(name, t)];
    }
    let quantize = || -> candle_core::Result<(Tensor, Tensor)> {
        let (r, c) = t.dims2()?;
        let (sr, sc) = (r.div_ceil(128), c.div_ceil(128));
        let w = t.to_dtype(DType::F32)?;
        let pad = w
            .pad_with_zeros(0, 0, sr * 128 - r)?
            .pad_with_zeros(1, 0, sc * 128 - c)?;
        // The largest magnitude of each block: [sr, sc].
        let max = pad.reshape((sr, 128, sc, 128))?.abs()?.max(3)?.max(1)?;
        // A power of two at or above max / 448 (e4m3's largest value).
        let scale = ((max.clamp(1e-30f32, f32::MAX)? / 448.0)?.log()? / std::f64::consts::LN_2)?
            .ceil()?
            .affine(std::f64::consts::LN_2, 0.0)?
            .exp()?;
        let full = scale
            .unsqueeze(1)?
            .unsqueeze(3)?
            .broadcast_as((sr, 128, sc, 128))?
            .reshape((sr * 128, sc * 128))?
            .narrow(0, 0, r)?
            .narrow(1, 0, c)?;
        Ok(((w / full)?.to_dtype(DType::F8E4M3)?, scale))
    };
    match quantize() {
        Ok((q, scale)) => vec![(format!("{name}_scale_inv"), scale), (name, q)],
        Err(_) => vec![(name, t)],
    }
}
