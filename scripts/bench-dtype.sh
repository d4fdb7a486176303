#!/usr/bin/env bash
# Weights held as stored (bf16) against everything in f32, on the bench-shaped model (configs/bench-qwen3-moe-1b,
# random weights made at load: no checkpoint needed), alternated, one `generate --json` per run:
#   [MATMUL=high|medium|highest] scripts/bench-dtype.sh [PROMPT_LEN=64] [TOKENS=64] [RUNS=5] [THREADS=2]
# (MATMUL: --matmul-precision, how prompt-sized bf16 products treat their activations; default high.)
# Prints prefill and decode tokens/s and peak RSS per run, then the medians and the bf16/f32 ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPT_LEN=${1:-64}; TOKENS=${2:-64}; RUNS=${3:-5}; THREADS=${4:-2}
BIN=${BIN:-target/release/moeserve}
MATMUL=${MATMUL:-high}
P=$(python3 -c "print(','.join(str((i*7+3)%49152) for i in range($PROMPT_LEN)))")
OUT=$(mktemp)
for run in $(seq "$RUNS"); do
  for d in auto f32; do
    { /usr/bin/time -f "RSS %M" "$BIN" --threads "$THREADS" generate --model configs/bench-qwen3-moe-1b \
        --load-format dummy --dtype "$d" --matmul-precision "$MATMUL" --prompt-ids "$P" --max-tokens "$TOKENS" --ignore-eos --json; } 2>&1 \
      | python3 -c "
import sys, json
lines = sys.stdin.read().splitlines()
t = json.loads([l for l in lines if l.startswith('{')][0])['timing']
rss = int([l for l in lines if l.startswith('RSS')][0].split()[1])
print('$d', t['prefill_tokens_per_s'], t['decode_tokens_per_s'], rss)" | tee -a "$OUT"
  done
done
python3 - "$OUT" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
med = {d: [st.median(float(r[i]) for r in rows if r[0] == d) for i in (1, 2, 3)] for d in ("auto", "f32")}
for d, name in (("auto", "bf16 (as stored)"), ("f32", "f32")):
    p, dec, rss = med[d]
    print(f"{name:18} prefill {p:7.1f} tok/s   decode {dec:6.1f} tok/s   peak RSS {rss/1024:7.0f} MiB")
print(f"bf16/f32           prefill {med['auto'][0]/med['f32'][0]:.2f}x        decode {med['auto'][1]/med['f32'][1]:.2f}x")
PY
rm -f "$OUT"
