#!/usr/bin/env bash
# Builds the CUDA release binaries (server + GPU test binaries) here and packs them, stripped, into
# DEST (default .dev/bin, git-ignored) for scripts/gpu-check.sh on a GPU machine without Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.dev/bin}
eval "$(bash scripts/cuda-toolchain.sh)"
cargo build --release --features cuda --target-dir target/cuda
msgs=$(cargo test --release --features cuda --no-run --target-dir target/cuda \
    --test gpu_kernels --test gpu_graphs --test golden --test dtype_parity --message-format json 2>/dev/null)
rm -rf "$DEST" && mkdir -p "$DEST"
for t in gpu_kernels gpu_graphs golden dtype_parity; do
    exe=$(echo "$msgs" | python3 -c "import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get('reason')=='compiler-artifact' and m['target']['name']=='$t' and m.get('executable'): print(m['executable'])")
    strip -o "$DEST/$t" "$exe"
done
strip -o "$DEST/moeserve" target/cuda/release/moeserve
pwd >"$DEST/manifest_dir"
xz -T2 -6 "$DEST"/moeserve "$DEST"/gpu_kernels "$DEST"/gpu_graphs "$DEST"/golden "$DEST"/dtype_parity
du -sh "$DEST"
