#!/usr/bin/env bash
# The CUDA 13.0 build toolchain from PyPI, for building `--features cuda` on a machine without a GPU or a
# system CUDA (CI does, so GPU code cannot rot unseen). Installs once into a venv, then prints the exports:
#
#   eval "$(bash scripts/cuda-toolchain.sh [PREFIX])"      # default PREFIX=$HOME/.cache/cuda13-venv
#   cargo build --release --features cuda
#
# Pinned to CUDA 13.0: the GPU machines run driver 580, which rejects PTX from nvcc >= 13.1. The binary
# links libcuda.so.1, libcublas.so.13, libcudart.so.13 and libcurand.so.10; only a link-time stub of
# libcuda is made here (the real one comes with the NVIDIA driver where the binary runs).
set -euo pipefail
PREFIX="${1:-$HOME/.cache/cuda13-venv}"
[ -x "$PREFIX/bin/pip" ] || python3 -m venv "$PREFIX" >&2
"$PREFIX/bin/pip" install -q --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 >&2
SITE="$("$PREFIX/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
C="$SITE/nvidia/cu13"
# The linker wants unversioned names (-lcublas, -lcudart, ...).
for l in cudart cublas cublasLt curand nvrtc; do
    f=$(cd "$C/lib" && ls "lib$l.so."* | grep -v -e alt -e builtins | head -1)
    ln -sf "$f" "$C/lib/lib$l.so"
done
# Link-time-only stub of the driver library: every cu* entry point of cuda.h, returning an error.
if [ ! -f "$C/lib/stubs/libcuda.so" ]; then
    mkdir -p "$C/lib/stubs"
    grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$C/include/cuda.h" | sort -u \
        | awk '{print "int " $1 "(void){return 999;}"}' >"$C/lib/stubs/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$C/lib/stubs/libcuda.so" "$C/lib/stubs/libcuda_stub.c"
fi
"$C/bin/nvcc" --version | tail -2 >&2
cat <<EOT
export CUDA_HOME='$C'
export PATH='$C/bin':"\$PATH"
export LIBRARY_PATH='$C/lib':'$C/lib/stubs':"\${LIBRARY_PATH:-}"
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=$(nproc)
EOT
