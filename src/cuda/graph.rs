//! Capturing a run of launches on candle's stream as a CUDA graph and replaying it: one launch in place
//! of the ~1,400 a decode step of a 48-layer model makes.
//!
//! What may run inside a capture: kernels and stream-ordered allocations (cudarc allocates with
//! `cuMemAllocAsync`; buffers made inside the capture belong to the graph and come back at the same
//! addresses on every replay — `AUTO_FREE_ON_LAUNCH` releases the previous replay's first). What may not:
//! any host↔device copy or synchronisation. The step's inputs are therefore written into fixed buffers
//! before each replay, and the closure is first run eagerly with candle's upload cache on, so the small
//! parameter uploads candle's kernels make (dims and strides) are cached before the capture needs them.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::result as driver_result;
use candle_core::cuda_backend::cudarc::driver::sys::{
    CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus,
};
use candle_core::cuda_backend::cudarc::driver::{CudaGraph, CudaStream};
use candle_core::Device;

use super::kernel_error;
use crate::error::{Error, Result};

/// A captured run of launches, replayed on the stream it was captured on.
pub struct CapturedGraph {
    graph: CudaGraph,
}

// SAFETY: CUDA allows a graph to be used from any thread as long as calls on it are serialised
// (cudarc's `CudaGraph` is not `Send` only because it holds raw handles); its one owner keeps it behind a
// lock (`model::decode_graphs`), and launching binds the context to the calling thread first.
unsafe impl Send for CapturedGraph {}

impl CapturedGraph {
    /// Runs `f` once for real (its result is the first one returned), then captures a second run of it
    /// (whose result — tensors at the graph's fixed addresses — is the second one). `f` must read its
    /// inputs only from buffers that outlive the graph and must not copy to or from the host. On any
    /// error the stream leaves capture mode and nothing is kept.
    pub fn capture<T>(device: &Device, mut f: impl FnMut() -> Result<T>) -> Result<(T, T, Self)> {
        let dev = device
            .as_cuda_device()
            .map_err(|e| kernel_error("graph capture needs a CUDA device", e))?;
        // Scoped to the eager run and the capture only: anything uploaded while it is on stays on the
        // device for the life of the process, so step inputs are never uploaded under it.
        let _uploads = dev.enable_cuda_graph_htod_cache();
        let eager = f()?;
        device.synchronize()?;
        let stream = dev.cuda_stream();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| kernel_error("beginning a graph capture", e))?;
        let captured = f();
        let graph = end_capture(&stream);
        let captured = captured?;
        // Until the graph's first launch its buffers do not exist: a captured result must not be freed
        // (dropped) then, or the failed free is stored and fails the next eager call.
        let graph = match graph.and_then(|g| {
            g.upload()
                .map_err(|e| kernel_error("uploading a graph", e))?;
            Ok(g)
        }) {
            Ok(g) => g,
            Err(e) => {
                std::mem::forget(captured);
                let _ = stream.context().check_err();
                return Err(e);
            }
        };
        Ok((eager, captured, Self { graph }))
    }

    /// Replays the graph on its stream (asynchronously, like any launch).
    pub fn launch(&self) -> Result<()> {
        self.graph
            .launch()
            .map_err(|e| kernel_error("launching a graph", e))
    }
}

/// Whether `device`'s stream is capturing a graph now (work that cannot be captured — candle's
/// prompt-sized `moe_gemm` allocates and synchronises through thrust — takes another path then).
pub fn capturing(device: &Device) -> bool {
    device.as_cuda_device().is_ok_and(|d| {
        // Asked of the driver directly: cudarc's `capture_status` first clears (and so loses) an error
        // stored during a capture, which `end_capture` must still see.
        // SAFETY: candle's stream is alive and its context current on the thread that launches on it.
        let status = unsafe { driver_result::stream::is_capturing(d.cuda_stream().cu_stream()) };
        !matches!(
            status,
            Ok(CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
        )
    })
}

/// Ends the capture on `stream` whatever happened inside it, and instantiates what was captured.
/// cudarc's `end_capture` returns early on an error stored by an earlier call (a free that failed in an
/// invalidated capture), which would leave the stream capturing and every later launch failing: stored
/// errors are drained first, and the capture is ended directly if it is still on.
fn end_capture(stream: &Arc<CudaStream>) -> Result<CudaGraph> {
    let stored = stream.context().check_err();
    let graph = stream
        .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
    if !matches!(
        stream.capture_status(),
        Ok(CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    ) {
        // SAFETY: the stream is candle's, alive; ending its capture returns a graph (or an error)
        // that nothing else refers to, destroyed here.
        if let Ok(g) = unsafe { driver_result::stream::end_capture(stream.cu_stream()) } {
            if !g.is_null() {
                // SAFETY: `g` was just returned by cuStreamEndCapture and is owned by no one else.
                let _ = unsafe { driver_result::graph::destroy(g) };
            }
        }
    }
    let _ = stream.context().check_err();
    stored.map_err(|e| kernel_error("an error during the graph capture", e))?;
    graph
        .map_err(|e| kernel_error("ending a graph capture", e))?
        .ok_or_else(|| Error::Device("the graph capture recorded nothing".into()))
}
