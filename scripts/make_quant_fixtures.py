"""Quantised-block fixtures made by llama.cpp's own quantiser: tests/fixtures/quant/.

    /opt/refenv/bin/python scripts/make_quant_fixtures.py

Same llama.cpp as scripts/make_gguf_fixtures.py (the sources llama-cpp-python 0.3.36 vendors; see its docstring for
the one-time setup): the quantisation is ggml_quantize_chunk from that build's libggml, called by
scripts/llama_cpp_ref.cpp (`quant` command), without an importance matrix, so each type goes through its
quantize_row_*_ref quantiser (what llama-quantize does without --imatrix; ggml_quantize_chunk is deterministic and
single-threaded). The dequantised values are gguf-py's `gguf.quants.dequantize` of those bytes (numpy); the script
checks that they equal ggml's own to_float bit for bit, and, for the types gguf-py can also quantise, whether
gguf-py's quantiser gives the same bytes as ggml's (recorded in the index, not required).

Files (all little-endian, no headers):
  input.f32            N_ELEMENTS f32: the one input every type was quantised from (8 super-blocks of 256 values,
                       each with its own character: plain Gaussian, per-32 scales spanning 1e-3..10, half zeros,
                       all positive, all negative, outliers, all zero, values on a coarse grid)
  <type>.q             ggml's blocks for <type> (N_ELEMENTS / block_size blocks of type_size bytes, in order)
  <type>.dequant.f32   N_ELEMENTS f32: the dequantisation of <type>.q
  index.json           the list above with ggml type ids, block sizes and byte counts, plus the checks
Types: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K. `<type>.q` is llama.cpp's quantisation of input.f32
for every type, so a quantiser can be tested bit for bit (Q8_0 and Q4_K first) and a dequantiser on all of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_gguf_fixtures as mg  # noqa: E402

OUT = mg.ROOT / "tests" / "fixtures" / "quant"
TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]
N_PER_ROW = 256
N_ROWS = 8
SEED = 20261129


def make_input() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    sb = []
    sb.append(rng.standard_normal(256))                                               # plain
    sb.append(rng.standard_normal(256) * np.repeat(10 ** rng.uniform(-3, 1, 8), 32))  # per-32 scales
    sb.append(np.concatenate([np.zeros(128), rng.standard_normal(128)]))              # zero sub-blocks
    sb.append(np.abs(rng.standard_normal(256)) * 0.5 + 0.1)                           # all positive
    sb.append(-np.abs(rng.standard_normal(256)) * 2.0 - 0.05)                         # all negative
    x = rng.standard_normal(256)
    x[rng.choice(256, 6, replace=False)] *= 40.0                                       # outliers
    sb.append(x)
    sb.append(np.zeros(256))                                                           # all zero
    sb.append(rng.integers(-8, 8, 256) * 0.25)                                         # coarse grid (ties)
    return np.concatenate(sb).astype("<f4")


def main() -> None:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf import quants

    tool = mg.ensure_tool()
    OUT.mkdir(parents=True, exist_ok=True)
    x = make_input()
    assert x.size == N_PER_ROW * N_ROWS
    (OUT / "input.f32").write_bytes(x.tobytes())
    entries = []
    with tempfile.TemporaryDirectory() as t:
        src = Path(t) / "in.f32"
        src.write_bytes(x.tobytes())
        for name in TYPES:
            qtype = GGMLQuantizationType[name.upper()]
            block, type_size = GGML_QUANT_SIZES[qtype]
            qpath, gpath = Path(t) / "q", Path(t) / "deq"
            subprocess.run([str(tool), "quant", name, str(src), str(N_PER_ROW), str(qpath), str(gpath)], check=True)
            q = qpath.read_bytes()
            assert len(q) == x.size // block * type_size, (name, len(q))
            ggml_deq = np.frombuffer(gpath.read_bytes(), dtype="<f4")
            deq = quants.dequantize(np.frombuffer(q, dtype=np.uint8).reshape(N_ROWS, -1), qtype).astype("<f4").ravel()
            same = bool(np.array_equal(deq.view("<u4"), ggml_deq.view("<u4")))
            if not same:
                print(f"{name}: gguf-py dequantize differs from ggml's to_float "
                      f"(max {np.abs(deq - ggml_deq).max():g})", file=sys.stderr)
            try:
                pyq = quants.quantize(x.reshape(N_ROWS, N_PER_ROW), qtype).tobytes()
                py_same = pyq == q
            except NotImplementedError:
                py_same = None
            (OUT / f"{name}.q").write_bytes(q)
            (OUT / f"{name}.dequant.f32").write_bytes(deq.tobytes())
            entries.append({
                "type": name.upper(), "ggml_type": int(qtype), "block_size": block, "type_size": type_size,
                "n_blocks": x.size // block, "quantized": f"{name}.q", "quantized_bytes": len(q),
                "dequantized": f"{name}.dequant.f32",
                "gguf_py_dequantize_equals_ggml_to_float": same,
                "gguf_py_quantize_equals_ggml": py_same,
                "max_abs_err": float(np.abs(deq - x).max()),
            })
            print(f"{name}: {len(q)} bytes, max |deq - x| = {entries[-1]['max_abs_err']:.4g}, "
                  f"gguf-py dequant == ggml: {same}, gguf-py quant == ggml: {py_same}", file=sys.stderr)
    index = {
        "generator": "scripts/make_quant_fixtures.py",
        "llama_cpp": mg.llama_cpp_info(),
        "quantizer": "ggml_quantize_chunk, no imatrix (quantize_row_*_ref)",
        "dequantizer": "gguf-py gguf.quants.dequantize (checked equal to ggml type_traits.to_float)",
        "endianness": "little",
        "input": "input.f32", "n_elements": int(x.size), "n_per_row": N_PER_ROW, "n_rows": N_ROWS, "seed": SEED,
        "entries": entries,
    }
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
