//! Where the model runs and in which precision: `--device auto|cpu|cuda:N` and `--dtype auto|bf16|f16|f32`.
//! `auto` picks the first CUDA GPU when this binary was built with the `cuda` feature and one is present,
//! else the CPU; the automatic dtype is bf16 on a GPU and f32 on the CPU (whose fast paths are f32).

use std::str::FromStr;

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
    match choice {
        DtypeChoice::Fixed(d) => d,
        DtypeChoice::Auto if device.is_cpu() => DType::F32,
        DtypeChoice::Auto => DType::BF16,
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
    fn auto_dtype_is_f32_on_the_cpu() {
        assert_eq!(dtype_for(DtypeChoice::Auto, &Device::Cpu), DType::F32);
        assert_eq!(
            dtype_for(DtypeChoice::Fixed(DType::BF16), &Device::Cpu),
            DType::BF16
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
