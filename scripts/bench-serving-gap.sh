#!/usr/bin/env bash
# Serving against the engine (issue 15): the bench-shaped model served over HTTP at concurrency 1 and 16
# (8-token prompts, 48 output tokens), with the engine's own step time read from /metrics before and after
# each run, so the gap splits into "steps got slower" and "time between steps".
# Usage: scripts/bench-serving-gap.sh [MODEL] [EXTRA SERVE FLAGS...]   (release build first; BIN=path
# runs another build of moeserve, to alternate two builds)
# In-process reference: MOESERVE_BENCH_MODEL=weights/bench-f32 MOESERVE_BENCH_CONTEXT=32 \
#   cargo bench --bench decode_step -- 'decode_step_bench_model/(1|16)$'
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/moeserve}
MODEL=${1:-weights/bench-f32}
shift || true
OUT=${OUT:-/tmp/serving-gap}
mkdir -p "$OUT"
$BIN --threads 2 serve --model "$MODEL" --port 0 --prefix-cache off "$@" > "$OUT/server.out" 2> "$OUT/server.err" &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
addr=
for _ in $(seq 1 300); do
  addr=$(head -1 "$OUT/server.out" 2>/dev/null | sed -n 's/^moeserve listening on //p')
  [ -n "$addr" ] && break
  sleep 1
done
[ -n "$addr" ] || { echo "server did not start"; cat "$OUT/server.err"; exit 1; }
metric() { curl -s "$addr/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
for c in 1 16; do
  n=$(( c == 1 ? 8 : 48 )); seed=$(( c == 1 ? 11 : 12 ))
  s0=$(metric moeserve_engine_step_seconds_sum); n0=$(metric moeserve_engine_step_seconds_count)
  b0=$(metric moeserve_engine_batch_tokens_total)
  t0=$(date +%s.%N)
  $BIN bench --base-url "$addr" --num-prompts $n --max-concurrency $c --random-input-len 8 \
    --random-output-len 48 --random-vocab 49000 --ignore-eos --warmup 1 --seed $seed \
    --result-json "$OUT/c$c.json" > "$OUT/c$c.txt" 2>&1
  t1=$(date +%s.%N)
  s1=$(metric moeserve_engine_step_seconds_sum); n1=$(metric moeserve_engine_step_seconds_count)
  b1=$(metric moeserve_engine_batch_tokens_total)
  grep -E 'Output token throughput|Mean TPOT|Mean TTFT' "$OUT/c$c.txt" | sed "s/^/c=$c /"
  awk -v s0="$s0" -v s1="$s1" -v n0="$n0" -v n1="$n1" -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" -v c=$c \
    'BEGIN { printf "c=%s engine: %d steps, mean step %.2f ms, %.1f tokens/step, busy %.0f%% of %.1f s (incl. warmup)\n",
       c, n1-n0, 1000*(s1-s0)/(n1-n0), (b1-b0)/(n1-n0), 100*(s1-s0)/(t1-t0), t1-t0 }'
done
