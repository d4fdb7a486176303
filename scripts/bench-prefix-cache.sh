#!/usr/bin/env bash
# Multi-turn TTFT, prefix cache on vs off, bench-shaped model (Q8_0 GGUF; scripts/make_bench_model.py +
# scripts/compare-llama-cpp.sh make it), 2 threads: 1 and 8 concurrent conversations of 10 turns.
# Results in /tmp/mt_{on,off}_{1,8}.json(.txt). BENCHMARKS.md "Prefix cache".
set -u
cd "$(dirname "$0")/.."
BIN=target/release/moeserve
MODEL=weights/bench-q8_0.gguf
run() {  # $1 = on|off, $2 = conversations, $3 = out file, $4 = --max-batch-tokens (default 2048)
  $BIN serve --model $MODEL --port 0 --threads 2 --prefix-cache $1 --max-running-seqs 16 \
     --max-batch-tokens ${4:-2048} > /tmp/mt_server.out 2>/tmp/mt_server.err &
  pid=$!
  for i in $(seq 1 120); do
    addr=$(head -1 /tmp/mt_server.out 2>/dev/null | sed -n 's/^moeserve listening on //p')
    [ -n "$addr" ] && break
    sleep 1
  done
  $BIN bench --base-url "$addr" --dataset multiturn --num-prompts $2 --turns 10 --turn-len 100 \
     --random-output-len 16 --ignore-eos --random-vocab 40000 --result-json $3 > $3.txt 2>&1
  kill $pid; wait $pid 2>/dev/null
}
run on 1 /tmp/mt_on_1.json
run off 1 /tmp/mt_off_1.json
run on 8 /tmp/mt_on_8.json
run off 8 /tmp/mt_off_8.json
run on 8 /tmp/mt_on_8_256.json 256
run off 8 /tmp/mt_off_8_256.json 256
cat /tmp/mt_*.json.txt
