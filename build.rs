//! Compiles the CUDA kernels in `kernels/` to PTX, only when the `cuda` feature is on (the CPU build needs
//! no CUDA toolkit). One PTX module per `.cu` file, written to OUT_DIR and embedded by `src/cuda/`.
//! The PTX targets compute capability 8.0 and is JIT-compiled by the driver for the GPU it runs on
//! (sm_80 A100, sm_90 H100/H200, newer). nvcc comes from CUDA_HOME/bin or PATH.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 6] = [
    "kv_cache",
    "paged_attention",
    "moe_routing",
    "expert_matmul",
    "expert_fp8",
    "fused",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    for name in KERNELS {
        let src = format!("kernels/{name}.cu");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args([
                "--ptx",
                "-arch=compute_80",
                "-O3",
                "-std=c++17",
                "-lineinfo",
                "-o",
            ])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {src}");
    }
}
