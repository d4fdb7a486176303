#!/usr/bin/env bash
# CPU decode and prefill side by side with llama.cpp on the bench-shaped model, in one command.
#
#   scripts/compare-llama-cpp.sh            # THREADS=<physical cores> REPS=7 PROMPT=64 GEN=128 DTYPE=f32
#   DTYPE=q8_0 scripts/compare-llama-cpp.sh # also bf16, q4_k_m, q5_k_m, q6_k, q4_0 (any llama-quantize type)
#
# 1. builds llama.cpp's CPU tools from the source that PyPI's llama-cpp-python sdist vendors (pinned),
# 2. makes the bench-shaped checkpoint (scripts/make_bench_model.py; tokenizer from scripts/demo-model.sh),
#    converts it with llama.cpp's own convert_hf_to_gguf.py (f32 / bf16) and, for quantized types, quantizes
#    that bf16 GGUF with llama.cpp's llama-quantize,
# 3. alternates `llama-bench` (pp/tg, one repetition) and `moeserve generate --json` on the same GGUF file REPS
#    times with the same thread count, prompt length and generated tokens, and reports medians (and
#    moeserve's peak RSS next to the file size),
# 4. reports decode as a fraction of the read bandwidth measured here between the runs (examples/membw.rs,
#    median; shared machines vary), with
#    bytes per token = active parameters minus the embedding table (one row is gathered, not streamed).
# Results: a table on stdout and target/compare-llama-cpp.json. Needs: a C++ compiler, cargo, and a Python
# (PYTHON, default /opt/refenv/bin/python or python3) with torch, transformers and numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
THREADS=${THREADS:-$(lscpu -p=CORE 2>/dev/null | grep -v '^#' | sort -u | wc -l)}
REPS=${REPS:-7}
PROMPT=${PROMPT:-64}
GEN=${GEN:-128}
DTYPE=${DTYPE:-f32}
PYTHON=${PYTHON:-$( [ -x /opt/refenv/bin/python ] && echo /opt/refenv/bin/python || echo python3 )}
CACHE=${CACHE:-$HOME/.cache/moeserve}
case $DTYPE in
    f32) BASE=f32 ;;
    *) BASE=bf16 ;;
esac
MODEL=weights/bench-$BASE
GGUF=weights/bench-$DTYPE.gguf
SRC=$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp
BIN=$SRC/build/bin

log() { echo "== $*" >&2; }

# 1. llama.cpp from the sdist, fetched with pip's own client. `--no-binary llama-cpp-python` keeps the sdist and
#    lets pip take its build backend as wheels: pip only prepares metadata (seconds), it compiles nothing.
#    (`--no-binary :all:` would also force the backend's cmake to build from source.)
if [ ! -x "$BIN/llama-bench" ]; then
    mkdir -p "$CACHE"
    log "downloading llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (sdist)"
    dl=$(mktemp -d)
    "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$dl" >&2
    tar xzf "$dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$CACHE"
    rm -rf "$dl"
    command -v cmake >/dev/null || "$PYTHON" -m pip install --quiet cmake ninja
    PATH=$(dirname "$PYTHON"):$PATH
    log "building llama.cpp CPU tools (~5 min on 2 cores)"
    cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
    cmake --build "$SRC/build" -j"$(nproc)" --target llama-bench llama-server >&2
fi

# 2. The checkpoint and its GGUF (a checkpoint without a BPE tokenizer, e.g. from an older script, is remade).
FLOAT_GGUF=weights/bench-$BASE.gguf
if [ ! -f "$GGUF" ] && [ ! -f "$FLOAT_GGUF" ]; then
    [ -f weights/demo/tokenizer.json ] || bash scripts/demo-model.sh >&2
    if ! "$PYTHON" -c "import json,sys; sys.exit(json.load(open('$MODEL/tokenizer.json'))['model']['type'] != 'BPE')" 2>/dev/null; then
        rm -rf "$MODEL"
        "$PYTHON" scripts/make_bench_model.py "$BASE" "$MODEL" >&2
    fi
fi
if [ ! -f "$FLOAT_GGUF" ] && [ ! -f "$GGUF" ]; then
    log "converting $MODEL with llama.cpp's convert_hf_to_gguf.py"
    PYTHONPATH=$SRC/gguf-py "$PYTHON" "$SRC/convert_hf_to_gguf.py" "$MODEL" --outtype "$BASE" --outfile "$FLOAT_GGUF" >&2
fi
if [ ! -f "$GGUF" ]; then
    log "quantizing $FLOAT_GGUF to $DTYPE with llama-quantize"
    "$BIN/llama-quantize" "$FLOAT_GGUF" "$GGUF" "$(echo "$DTYPE" | tr '[:lower:]' '[:upper:]')" >&2
fi
cargo build --release --quiet
cargo build --release --quiet --example membw
MOESERVE=target/release/moeserve

# 3. Alternating runs.
ids=$("$PYTHON" -c "import random; random.seed(1); print(','.join(str(random.randrange(100, 49000)) for _ in range($PROMPT)))")
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
for r in $(seq "$REPS"); do
    log "repetition $r/$REPS"
    "$BIN/llama-bench" -m "$GGUF" -t "$THREADS" -p "$PROMPT" -n "$GEN" -r 1 -o json 2>/dev/null \
        | "$PYTHON" -c "import json,sys; [print('llama', 'pp' if t['n_prompt'] else 'tg', t['avg_ts']) for t in json.load(sys.stdin)]" >>"$runs"
    "$PYTHON" - "$MOESERVE" "$THREADS" "$GGUF" "$ids" "$GEN" >>"$runs" <<'EOF'
import json, resource, subprocess, sys
exe, threads, gguf, ids, gen = sys.argv[1:]
out = subprocess.run([exe, "--threads", threads, "generate", "--model", gguf, "--prompt-ids", ids, "--max-tokens", gen,
                      "--ignore-eos", "--json"], capture_output=True, text=True, check=True).stdout
t = json.loads(out.strip().splitlines()[-1])["timing"]
print("moeserve pp", t["prefill_tokens_per_s"])
print("moeserve tg", t["decode_tokens_per_s"])
print("moeserve rss_mib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
EOF
    echo "machine bw $(RAYON_NUM_THREADS=$THREADS target/release/examples/membw)" >>"$runs"
done

# 4. The summary.
active=$("$MOESERVE" inspect --model "$GGUF" | sed -n 's/.*, \([0-9.]*\)M active per token.*/\1/p')
total=$("$MOESERVE" inspect --model "$GGUF" | sed -n 's/^parameters: *\([0-9.]*\)M total.*/\1/p')
"$PYTHON" - "$runs" "$active" "$MODEL" "$THREADS" "$PROMPT" "$GEN" "$REPS" "$DTYPE" "$total" "$GGUF" <<'EOF'
import json, os, statistics, sys
runs, active, model, threads, prompt, gen, reps, dtype, total, gguf = sys.argv[1:]
vals = {}
for line in open(runs):
    who, what, v = line.split()
    vals.setdefault((who, what), []).append(float(v))
cfg = json.load(open(f"{model}/config.json"))
# Bytes per parameter as the file holds them (quantized mixes: the file's average).
file_bytes = os.path.getsize(gguf)
elem = file_bytes / (float(total) * 1e6)
bytes_per_token = (float(active) * 1e6 - cfg["vocab_size"] * cfg["hidden_size"]) * elem
med = {k: statistics.median(v) for k, v in vals.items()}
bw = med[("machine", "bw")]
res = {
    "threads": int(threads), "prompt_tokens": int(prompt), "generated_tokens": int(gen), "repetitions": int(reps),
    "dtype": dtype, "read_bandwidth_gb_s": float(bw), "bytes_per_token": bytes_per_token,
    "median_tokens_per_s": {f"{w}_{x}": v for (w, x), v in med.items()},
    "all_tokens_per_s": {f"{w}_{x}": v for (w, x), v in vals.items()},
}
print(f"| {dtype}, {threads} threads, {prompt}-token prompt, {gen} tokens, median of {reps} | llama.cpp | moeserve | ratio |")
print("|---|---|---|---|")
for what, name in (("pp", "prompt tokens/s"), ("tg", "decode tokens/s")):
    a, b = med[("llama", what)], med[("moeserve", what)]
    print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}× |")
rss = med.get(("moeserve", "rss_mib"))
if rss:
    print(f"| moeserve peak RSS | {rss:.0f} MiB (GGUF file {file_bytes / 2**20:.0f} MiB) | | |")
for who in ("llama", "moeserve"):
    gbs = med[(who, "tg")] * bytes_per_token / 1e9
    print(f"| {who} decode bandwidth | {gbs:.1f} GB/s = {100 * gbs / float(bw):.0f}% of measured {float(bw):.1f} GB/s | | |")
json.dump(res, open("target/compare-llama-cpp.json", "w"), indent=1)
EOF
