//! Launchers for the CUDA kernels in `kernels/` (compiled to PTX by build.rs under the `cuda` feature):
//! writing and zeroing the paged KV cache, paged attention, MoE routing and the expert sort, and decode
//! steps captured as CUDA graphs. Each takes and returns candle tensors on one CUDA device; everything
//! runs on candle's stream, so no launch synchronises with the host.

mod attention;
mod fp8;
mod fused;
mod graph;
mod kv;
mod moe;

pub use attention::{paged_attention, CacheHeads, ContextSeq, PagedContext};
pub use fp8::{expert_matmul_fp8, Fp8Stack};
pub use fused::{
    add_rms_norm, fusions, mla_latent_write, mla_query, moe_combine, qk_norm_rope_write,
    row_argmax, set_fusions, MlaRope, QkvStep,
};
pub use graph::{capturing, CapturedGraph};
pub use kv::{kv_write, BlockZeroer, PAD_SLOT};
pub use moe::{
    expert_glu, expert_matmul, route, sort_by_expert, RouteMode, RouteParams, SortedRoutes,
};

use candle_core::cuda_backend::cudarc::driver::CudaFunction;
use candle_core::cuda_backend::cudarc::driver::DevicePtr;
use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Storage, Tensor};

use crate::error::{Error, Result};

const KV_CACHE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kv_cache.ptx"));
const PAGED_ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
const MOE_ROUTING_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_routing.ptx"));
const EXPERT_MATMUL_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/expert_matmul.ptx"));
const EXPERT_FP8_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/expert_fp8.ptx"));
const FUSED_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));

/// One of our PTX modules.
#[derive(Clone, Copy)]
enum Module {
    KvCache,
    PagedAttention,
    MoeRouting,
    ExpertMatmul,
    ExpertFp8,
    Fused,
}

impl Module {
    fn name_and_ptx(self) -> (&'static str, &'static str) {
        match self {
            Module::KvCache => ("moeserve_kv_cache", KV_CACHE_PTX),
            Module::PagedAttention => ("moeserve_paged_attention", PAGED_ATTENTION_PTX),
            Module::MoeRouting => ("moeserve_moe_routing", MOE_ROUTING_PTX),
            Module::ExpertMatmul => ("moeserve_expert_matmul", EXPERT_MATMUL_PTX),
            Module::ExpertFp8 => ("moeserve_expert_fp8", EXPERT_FP8_PTX),
            Module::Fused => ("moeserve_fused", FUSED_PTX),
        }
    }
}

fn kernel_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device(format!("{what}: {e}"))
}

/// The CUDA device a tensor lives on.
fn cuda_device(t: &Tensor) -> Result<&CudaDevice> {
    t.device()
        .as_cuda_device()
        .map_err(|e| kernel_error("expected a CUDA tensor", e))
}

/// Loads (once per device, then cached by candle) a kernel of one of our modules.
fn function(dev: &CudaDevice, module: Module, name: &str) -> Result<CudaFunction> {
    let (module_name, ptx) = module.name_and_ptx();
    dev.get_or_load_custom_func(name, module_name, ptx)
        .map(|f| f.into_cuda_function())
        .map_err(|e| kernel_error(&format!("loading kernel {name}"), e))
}

/// Device address of a contiguous tensor's first element.
fn ptr(t: &Tensor) -> Result<u64> {
    if !t.is_contiguous() {
        return Err(Error::Device("kernel input is not contiguous".into()));
    }
    let dev = cuda_device(t)?;
    let stream = dev.cuda_stream();
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        return Err(Error::Device("expected a CUDA tensor".into()));
    };
    let base = match t.dtype() {
        DType::F32 => s.as_cuda_slice::<f32>().map(|x| x.device_ptr(&stream).0),
        DType::BF16 => s
            .as_cuda_slice::<half::bf16>()
            .map(|x| x.device_ptr(&stream).0),
        DType::F16 => s
            .as_cuda_slice::<half::f16>()
            .map(|x| x.device_ptr(&stream).0),
        DType::U32 => s.as_cuda_slice::<u32>().map(|x| x.device_ptr(&stream).0),
        DType::U8 => s.as_cuda_slice::<u8>().map(|x| x.device_ptr(&stream).0),
        DType::I64 => s.as_cuda_slice::<i64>().map(|x| x.device_ptr(&stream).0),
        other => return Err(Error::Device(format!("no kernel takes {other:?} tensors"))),
    }
    .map_err(|e| kernel_error("device pointer", e))?;
    Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// A tensor whose every element the next kernel writes: allocated on the stream, not cleared (saves a
/// memset launch per output).
fn output(
    shape: impl Into<candle_core::Shape>,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    use candle_core::cuda_backend::CudaStorage;
    let shape = shape.into();
    let dev = device
        .as_cuda_device()
        .map_err(|e| kernel_error("expected a CUDA device", e))?;
    let n = shape.elem_count().max(1);
    let alloc_error = |e| kernel_error("allocating a kernel output", e);
    // SAFETY: the launch that follows writes every element before anything reads it.
    let storage = unsafe {
        match dtype {
            DType::F32 => {
                CudaStorage::wrap_cuda_slice(dev.alloc::<f32>(n).map_err(alloc_error)?, dev.clone())
            }
            DType::BF16 => CudaStorage::wrap_cuda_slice(
                dev.alloc::<half::bf16>(n).map_err(alloc_error)?,
                dev.clone(),
            ),
            DType::F16 => CudaStorage::wrap_cuda_slice(
                dev.alloc::<half::f16>(n).map_err(alloc_error)?,
                dev.clone(),
            ),
            DType::U32 => {
                CudaStorage::wrap_cuda_slice(dev.alloc::<u32>(n).map_err(alloc_error)?, dev.clone())
            }
            other => return Err(Error::Device(format!("no kernel writes {other:?}"))),
        }
    };
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        shape,
        candle_core::op::BackpropOp::none(),
        false,
    ))
}

/// Kernel-name suffix of a storage dtype.
fn dtype_suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => Err(Error::Device(format!("no kernel for {other:?}"))),
    }
}

fn launch_error(name: &str, e: impl std::fmt::Display) -> Error {
    kernel_error(&format!("launching {name}"), e)
}

/// Launches kernel `name` of `module` on candle's stream with `pointers`, then `ints`, then `floats` as
/// its arguments, in that order (every kernel here but paged attention takes them so).
///
/// # Safety
/// The arguments must match the kernel's signature, and the pointers must address live device memory
/// of the sizes the kernel reads and writes under `cfg`.
unsafe fn launch(
    dev: &CudaDevice,
    module: Module,
    name: &str,
    cfg: candle_core::cuda_backend::cudarc::driver::LaunchConfig,
    pointers: &[u64],
    ints: &[i32],
    floats: &[f32],
) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    let f = function(dev, module, name)?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    for p in pointers {
        b.arg(p);
    }
    for i in ints {
        b.arg(i);
    }
    for x in floats {
        b.arg(x);
    }
    // SAFETY: the caller's contract (arguments match the kernel, pointers live and large enough).
    unsafe { b.launch(cfg) }.map_err(|e| launch_error(name, e))?;
    Ok(())
}
