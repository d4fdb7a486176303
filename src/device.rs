//! Where the model runs and in which precision: `--device auto|cpu|cuda:N` and `--dtype auto|bf16|f16|f32`.
//! `auto` picks the first CUDA GPU when this binary was built with the `cuda` feature and one is present,
//! else the CPU; the automatic dtype is bf16 on a GPU and f32 on the CPU (whose fast paths are f32).

use std::str::FromStr;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// A device as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: use auto, cpu or cuda:N")),
        }
    }
}

/// How exactly the CPU multiplies f32 activations by bf16 weights (products of two or more rows) — the
/// names and levels of PyTorch's `set_float32_matmul_precision`. Decode-sized products (up to
/// `cpu::matmul::MAX_ROWS` rows) are never rounded: `medium` applies to prompt-sized ones. Matters only
/// on CPUs with AVX512-BF16; elsewhere every level is `highest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MatmulPrecision {
    /// f32 products: the weights widened in registers (few rows) or panel by panel for an f32 GEMM.
    Highest,
    /// Activations split into two bf16 terms (16 significant bits, relative error ≤ 2⁻¹⁷) through the
    /// bf16 dot-product instructions: f32-level accuracy from weights read as stored.
    #[default]
    High,
    /// Activations rounded to bf16 (what PyTorch and llama.cpp compute a bf16 model in): twice the
    /// multiply rate of `high`, logits within ~1e-2 of f32.
    Medium,
}

/// A precision as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeChoice {
    Auto,
    Fixed(DType),
}

impl FromStr for DtypeChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "bf16" | "bfloat16" => Ok(Self::Fixed(DType::BF16)),
            "f16" | "float16" | "half" => Ok(Self::Fixed(DType::F16)),
            "f32" | "float32" | "float" => Ok(Self::Fixed(DType::F32)),
            _ => Err(format!("unknown dtype {s:?}: use auto, bf16, f16 or f32")),
        }
    }
}

/// Opens the chosen device.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Device(format!(
                    "cuda:{n} asked for, but this binary was built without the `cuda` feature \
                     (cargo build --release --features cuda)"
                )));
            }
            new_cuda(n)
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = new_cuda(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// Opens GPU `n`. Everything of ours runs on candle's one stream per device, so cudarc's per-buffer event
/// tracking (an event wait and record around every launch, for multi-stream safety) is turned off: it
/// costs more host time per kernel than small decode kernels take on the GPU.
fn new_cuda(n: usize) -> Result<Device> {
    let device = Device::new_cuda(n).map_err(|e| Error::Device(format!("cuda:{n}: {e}")))?;
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        // SAFETY: moeserve uses a single stream per device (candle's), so buffers are never shared
        // between streams; stream order alone keeps reads after writes and frees after uses.
        unsafe { cuda.disable_event_tracking() };
    }
    Ok(device)
}

/// The compute dtype for `device`.
pub fn dtype_for(choice: DtypeChoice, device: &Device) -> DType {
    precision_for(choice, device).compute
}

/// The block-quantized types held as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl QuantType {
    pub const ALL: [QuantType; 10] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q2_K,
        QuantType::Q3_K,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];

    /// From a GGUF tensor type id; `None` for the float types and the ones not held.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Some(match id {
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            _ => return None,
        })
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q2_K => GgmlDType::Q2K,
            Self::Q3_K => GgmlDType::Q3K,
            Self::Q4_K => GgmlDType::Q4K,
            Self::Q5_K => GgmlDType::Q5K,
            Self::Q6_K => GgmlDType::Q6K,
        }
    }

    /// llama.cpp's name (`Q4_K`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        self.ggml().block_size()
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.ggml().type_size()
    }

    /// Bytes of one row of `cols` elements; `None` when `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_elems())
            .then(|| cols / self.block_elems() * self.block_bytes())
    }
}

impl std::str::FromStr for QuantType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown quantization type {s}"))
    }
}

/// `--quantize`: weight matrices quantized at load (block by block, ggml's reference quantizer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantize {
    pub ty: QuantType,
    /// Every linear projection, not only the experts' (embeddings, lm head and routers stay).
    pub all_linear: bool,
}

/// Which dtype a model's weight matrices (projections, experts, embeddings, lm head) are held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixPrecision {
    /// The compute dtype (GPUs; `--dtype f32` on the CPU).
    Compute,
    /// The checkpoint's own precision: bf16 and f16 stay as stored, block-FP8 becomes bf16, f32 stays f32.
    Stored,
    /// This dtype.
    Fixed(DType),
}

/// How a model is held: activations, norms, attention, routing and the KV cache compute in `compute`;
/// weight matrices are held as `matrices` says (the CPU kernels widen them in registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    pub compute: DType,
    pub matrices: MatrixPrecision,
    /// Quantize matrices at load (CPU, f32 compute only).
    pub quantize: Option<Quantize>,
    /// The KV cache's dtype when not the compute dtype (`--kv-cache-dtype`; CPU: bf16 / f16 halve it).
    pub kv_cache: Option<DType>,
    /// `--matmul-precision`: how prompt-sized CPU products of bf16 weights treat f32 activations.
    pub matmul: MatmulPrecision,
}

impl Precision {
    /// The dtype the KV cache is held in.
    pub fn kv_dtype(&self) -> DType {
        self.kv_cache.unwrap_or(self.compute)
    }

    /// `--kv-cache-dtype` applied: `auto` keeps the compute dtype.
    pub fn with_kv_cache(mut self, choice: DtypeChoice) -> Self {
        self.kv_cache = match choice {
            DtypeChoice::Auto => None,
            DtypeChoice::Fixed(d) => Some(d),
        };
        self
    }

    /// Whether `device` can hold the KV cache in [`Self::kv_dtype`]: any float dtype on the CPU with f32
    /// compute (attention widens it as it reads); on a GPU only the compute dtype (the CUDA kernels read
    /// the cache in it).
    pub fn check_kv(&self, device: &Device) -> Result<()> {
        let kv = self.kv_dtype();
        let ok = kv == self.compute
            || (device.is_cpu()
                && self.compute == DType::F32
                && matches!(kv, DType::BF16 | DType::F16));
        if ok {
            Ok(())
        } else {
            Err(Error::Device(format!(
                "--kv-cache-dtype {kv:?} is not supported with compute in {:?} on this device \
                 (the CPU holds f32, bf16 or f16 caches with f32 compute; a GPU uses its compute dtype)",
                self.compute
            )))
        }
    }
}

impl From<DType> for Precision {
    /// Everything in `dtype` (the reference configuration of the golden tests, and GPUs).
    fn from(dtype: DType) -> Self {
        Self {
            compute: dtype,
            matrices: MatrixPrecision::Compute,
            quantize: None,
            kv_cache: None,
            matmul: Default::default(),
        }
    }
}

/// `--dtype` on `device`. On the CPU compute is always f32 (bf16 arithmetic there is slow and lossy):
/// `auto` keeps the checkpoint's weights as stored, `bf16` / `f16` hold the weights in that dtype, `f32`
/// widens everything at load. On a GPU the dtype is the compute dtype (`auto`: bf16).
pub fn precision_for(choice: DtypeChoice, device: &Device) -> Precision {
    match (choice, device.is_cpu()) {
        (DtypeChoice::Auto, true) => Precision {
            compute: DType::F32,
            matrices: MatrixPrecision::Stored,
            quantize: None,
            kv_cache: None,
            matmul: Default::default(),
        },
        (DtypeChoice::Fixed(d @ (DType::BF16 | DType::F16)), true) => Precision {
            compute: DType::F32,
            matrices: MatrixPrecision::Fixed(d),
            quantize: None,
            kv_cache: None,
            matmul: Default::default(),
        },
        (DtypeChoice::Fixed(d), _) => d.into(),
        (DtypeChoice::Auto, false) => DType::BF16.into(),
    }
}

/// A short name for logs and `inspect`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--kv-cache-dtype`: bf16 / f16 caches beside f32 compute on the CPU; anything else differing from
    /// the compute dtype is refused before loading (with the flag's name in the message).
    #[test]
    fn kv_cache_dtypes_the_device_can_hold() {
        let cpu = Device::Cpu;
        let auto = precision_for(DtypeChoice::Auto, &cpu);
        assert_eq!(auto.kv_dtype(), DType::F32);
        for d in [DType::BF16, DType::F16, DType::F32] {
            let p = auto.with_kv_cache(DtypeChoice::Fixed(d));
            assert_eq!(p.kv_dtype(), d);
            assert!(p.check_kv(&cpu).is_ok(), "{d:?}");
        }
        let bf16_compute =
            Precision::from(DType::BF16).with_kv_cache(DtypeChoice::Fixed(DType::F32));
        let err = bf16_compute.check_kv(&cpu).unwrap_err().to_string();
        assert!(err.contains("--kv-cache-dtype"), "{err}");
        assert_eq!(auto.with_kv_cache(DtypeChoice::Auto).kv_cache, None);
    }

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!("bf16".parse(), Ok(DtypeChoice::Fixed(DType::BF16)));
        assert_eq!("float32".parse(), Ok(DtypeChoice::Fixed(DType::F32)));
        assert!("int8".parse::<DtypeChoice>().is_err());
    }

    #[test]
    fn cpu_computes_in_f32_with_weights_as_chosen() {
        let cpu = &Device::Cpu;
        assert_eq!(dtype_for(DtypeChoice::Auto, cpu), DType::F32);
        assert_eq!(
            precision_for(DtypeChoice::Auto, cpu).matrices,
            MatrixPrecision::Stored
        );
        let bf16 = precision_for(DtypeChoice::Fixed(DType::BF16), cpu);
        assert_eq!(bf16.compute, DType::F32);
        assert_eq!(bf16.matrices, MatrixPrecision::Fixed(DType::BF16));
        assert_eq!(
            precision_for(DtypeChoice::Fixed(DType::F32), cpu),
            Precision::from(DType::F32)
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = open(DeviceChoice::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
        assert!(open(DeviceChoice::Auto).unwrap().is_cpu());
    }
}
