"""GGUF fixtures converted by llama.cpp's own converter, and llama.cpp's logits for them.

    /opt/refenv/bin/python scripts/make_gguf_fixtures.py                 # all families, convert + reference
    /opt/refenv/bin/python scripts/make_gguf_fixtures.py qwen3_moe olmoe  # some families
    /opt/refenv/bin/python scripts/make_gguf_fixtures.py --no-reference   # convert (and dump) only

llama.cpp version: the sources that PyPI's llama-cpp-python 0.3.36 sdist vendors (vendor/llama.cpp, llama.cpp
commit 0c1e57098, ggml 0.25.3, gguf-py 0.19.0). They are fetched with `pip download` into
~/.cache/moeserve/llama_cpp_python-0.3.36 and built there with the same CMake configuration as
scripts/compare-llama-cpp.sh (CPU, GGML_NATIVE=ON); nothing of llama.cpp enters the repository.
The Python needs torch, transformers, numpy and safetensors (see ../shared/CUDA.md for /opt/refenv) plus
llama.cpp's gguf-py (`pip install ~/.cache/moeserve/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py`).
JOBS (default 2) sets the build's parallelism; run it under `nice -n 19` on a shared machine.

For each checkpoint tests/fixtures/<family>/ this writes, next to it:
  model-f32.gguf, model-q8_0.gguf   convert_hf_to_gguf.py --outtype f32 / q8_0 (run as a module, see below)
  gguf_reference.json                llama.cpp's logits at every position of every prompt of reference.json,
                                     for both files (6 significant digits), the 16-token greedy continuation of
                                     every prompt, and llama.cpp's tokenisation of reference.json's prompt_texts
and a gguf_dump.py listing of each file in target/gguf-dumps/<family>-<type>.txt (for reading, not a fixture).

Why the converter is monkeypatched: the fixture tokenizers are tiny self-trained byte-level BPEs (ByteLevel
pre-tokenizer with use_regex=true, i.e. GPT-2's split regex). convert_hf_to_gguf identifies the pre-tokenizer by
hashing the token ids of a check string, and a self-trained vocabulary hashes to nothing it knows, so it raises
"BPE pre-tokenizer was not recognized". The wrapper (`--convert-one`, run in a fresh process per file) replaces
TextModel.get_vocab_base_pre, after checking that the tokenizer really is ByteLevel/use_regex, to return "gpt-2":
llama-vocab.cpp maps "gpt-2" to LLAMA_VOCAB_PRE_TYPE_GPT2, whose regex is GPT-2's
`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)`. llama.cpp's own file is untouched.
The reference step re-tokenises reference.json's prompt_texts with llama.cpp and records whether the ids match.

Results per family (llama.cpp 0c1e57098; `max |llama.cpp F32 - HF|` over all positions of reference.json's prompts):
  qwen3_moe         qwen3moe   converts; F32 logits match HF to 2e-6, greedy equal.
  qwen2_moe         -          NOT converted: "ValueError: Can not map tensor 'model.layers.1.mlp.down_proj.weight'".
                               The fixture has a dense layer (mlp_only_layers=[1]); llama.cpp's qwen2moe has no
                               dense-FFN tensors (every layer MoE), so the converter has no name for it.
  olmoe             olmoe      converts, but llama.cpp cannot load it: "check_tensor_dims: tensor
                               'blk.0.attn_k_norm.weight' has wrong shape; expected 64, got 32" (llama.cpp sizes
                               k_norm as n_embd, i.e. assumes MHA; the fixture is GQA). Also: the converter writes
                               layer_norm_rms_epsilon 1e-5 whatever the config says (fixture: 1e-6), and neither
                               writes nor applies clip_qkv (fixture: 4.0). No gguf_reference.json.
  mixtral           llama      converts; llama.cpp ignores sliding_window (fixture: 12), so prompts longer than 12
                               tokens differ from HF (up to 2.5); with HF's sliding_window=None they match to 6e-6.
                               attn_q/attn_k rows are permuted by the converter for llama.cpp's NORM RoPE.
  deepseek_v2       deepseek2  converts; logits differ from HF (up to 3.5) because llama.cpp ranks expert groups by
                               the sum of each group's top-2 scores (DeepSeek-V3's rule) while HF's
                               group_limited_greedy uses the group max; with HF patched to top-2-sum they match to 1e-5.
  deepseek_v2_lite  deepseek2  converts; needs the q_lora_rank=0 load override (see kv_overrides); matches HF to 4e-6.
  moonlight         deepseek2  converts; same override; matches HF to 3e-6.
  kimi_k2           deepseek2  converts once transformers knows model_type "kimi_k2" (register_hub_config); the
                               fixture's tokenizer is the same byte-level BPE, so tokenizer.ggml.pre is "gpt-2" (a
                               real Kimi-K2's tiktoken tokenizer would get "kimi-k2"); matches HF to 3e-6.
  llama.cpp's tokenisation of reference.json's prompt_texts equals HF's ids for every converted family.

Reference route: a small C++ program, scripts/llama_cpp_ref.cpp, compiled against the libllama/libggml of that
build (target/llama-cpp-ref/). Chosen over building llama-cpp-python from the same sdist because it reuses the one
llama.cpp build (a second full compile costs ~15 min on 2 cores), gives exactly the decode/batch calls we want,
and also exposes ggml_quantize_chunk for scripts/make_quant_fixtures.py.

Settings that affect llama.cpp's numerics (recorded in the JSON): n_threads=1; K/V cache F32 and flash attention
off for the logits (llama.cpp's defaults are an F16 cache and flash attention "auto", which on CPU means on;
`greedy_default_settings` records prompt 0's continuation under those defaults); one llama_decode for the whole
prompt (n_batch = n_ubatch = n_ctx = 128); CPU backend built with GGML_NATIVE (on this machine AVX-512), whose
matmuls quantise activations to Q8_0 when the weights are Q8_0 (the vec_dot type of Q8_0). Weight repacking
(use_extra_bufts, default on) would change the summation order, but llama.cpp takes no tensor of these small files
into CPU_REPACK (it logs so with LLAMA_REF_VERBOSE=1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE = Path(os.environ.get("CACHE", Path.home() / ".cache" / "moeserve"))
ROOT = Path(__file__).resolve().parent.parent
SRC = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
BUILD = SRC / "build"
TOOL = ROOT / "target" / "llama-cpp-ref" / "llama_cpp_ref"
FIXTURES = ROOT / "tests" / "fixtures"
DUMPS = ROOT / "target" / "gguf-dumps"
FAMILIES = ["qwen3_moe", "qwen2_moe", "olmoe", "mixtral", "deepseek_v2", "deepseek_v2_lite", "moonlight", "kimi_k2"]
OUTTYPES = ["f32", "q8_0"]
N_GEN = 16
N_THREADS = 1
PRE_TOKENIZER = "gpt-2"


def log(msg: str) -> None:
    print(f"== {msg}", file=sys.stderr, flush=True)


def ensure_source() -> None:
    """The llama.cpp sources of the pinned llama-cpp-python sdist, fetched with pip's own client."""
    if (SRC / "convert_hf_to_gguf.py").exists():
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        log(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (sdist)")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                        "llama-cpp-python", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", d], check=True)
        subprocess.run(["tar", "xzf", f"{d}/llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz", "-C", str(CACHE)],
                       check=True)


def lib_dir() -> Path:
    return BUILD / "bin"


def ensure_build() -> None:
    """libllama + libggml (and the CPU tools), configured as scripts/compare-llama-cpp.sh configures them."""
    ensure_source()
    if (lib_dir() / "libllama.so").exists():
        return
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if shutil.which("cmake", path=env["PATH"]) is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "cmake", "ninja"], check=True)
    log("building llama.cpp (libllama, llama-bench, llama-quantize, llama-server, llama-simple)")
    subprocess.run(["cmake", "-S", str(SRC), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_BUILD_SERVER=ON"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(BUILD), f"-j{os.environ.get('JOBS', '2')}", "--target", "llama-bench",
                    "llama-quantize", "llama-server", "llama-simple"], check=True, env=env)


def ensure_tool() -> Path:
    """scripts/llama_cpp_ref.cpp compiled against that build (rebuilt when the source is newer)."""
    ensure_build()
    src = ROOT / "scripts" / "llama_cpp_ref.cpp"
    if TOOL.exists() and TOOL.stat().st_mtime >= src.stat().st_mtime:
        return TOOL
    TOOL.parent.mkdir(parents=True, exist_ok=True)
    log(f"compiling {TOOL.relative_to(ROOT)}")
    subprocess.run([os.environ.get("CXX", "c++"), "-std=c++17", "-O2", "-o", str(TOOL), str(src),
                    f"-I{SRC / 'include'}", f"-I{SRC / 'ggml' / 'include'}", f"-L{lib_dir()}",
                    f"-Wl,-rpath,{lib_dir()}", "-lllama", "-lggml", "-lggml-base"], check=True)
    return TOOL


def llama_cpp_info() -> dict:
    info = {"llama_cpp_python_sdist": LLAMA_CPP_PYTHON_VERSION}
    changelog = SRC.parent.parent / "CHANGELOG.md"
    if changelog.exists():
        for line in changelog.read_text().splitlines():
            if "update llama.cpp to" in line:
                info["llama_cpp_commit"] = line.rsplit("@", 1)[-1].strip()
                break
    return info


# --- conversion ---------------------------------------------------------------------------------------------------

def register_hub_config(model_dir: Path) -> None:
    """Teach transformers the hub model_type "kimi_k2" (a DeepseekV3 config, which real Kimi-K2 checkpoints ship as
    remote code that the fixture does not carry). Without it AutoTokenizer.from_pretrained, which the converter
    calls, falls back to a bare PreTrainedConfig that crashes in transformers 5.23's rope handling
    ("'PreTrainedConfig' object has no attribute 'max_position_embeddings'")."""
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    if model_type != "kimi_k2":
        return
    from transformers import AutoConfig, DeepseekV3Config

    class KimiK2Config(DeepseekV3Config):
        model_type = "kimi_k2"

    AutoConfig.register("kimi_k2", KimiK2Config)


def convert_one(model_dir: str, outtype: str, outfile: str) -> None:
    """Runs in its own process: llama.cpp's convert_hf_to_gguf.main() with the pre-tokenizer check patched."""
    tok = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    pre = tok.get("pre_tokenizer") or {}
    if not (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)):
        raise SystemExit(f"{model_dir}: pre-tokenizer {pre} is not ByteLevel/GPT-2; no mapping for it here")
    sys.path.insert(0, str(SRC))
    import convert_hf_to_gguf  # noqa: E402  (llama.cpp's script; puts its own gguf-py first on sys.path)
    from conversion import base  # noqa: E402

    def get_vocab_base_pre(self, tokenizer) -> str:  # see the module docstring
        return PRE_TOKENIZER

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    register_hub_config(Path(model_dir))
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", outtype, "--outfile", outfile]
    convert_hf_to_gguf.main()


def convert(family: str) -> dict:
    d = FIXTURES / family
    result = {}
    DUMPS.mkdir(parents=True, exist_ok=True)
    for outtype in OUTTYPES:
        out = d / f"model-{outtype}.gguf"
        log(f"{family}: converting to {out.relative_to(ROOT)}")
        p = subprocess.run([sys.executable, __file__, "--convert-one", str(d), outtype, str(out)],
                           capture_output=True, text=True)
        (DUMPS / f"{family}-{outtype}.convert.log").write_text(p.stdout + p.stderr)
        if p.returncode != 0:
            out.unlink(missing_ok=True)
            err = (p.stderr.strip().splitlines() or ["?"])[-1]
            log(f"{family}: conversion to {outtype} FAILED: {err}")
            result[outtype] = {"ok": False, "error": err}
            continue
        dump = subprocess.run([sys.executable, str(SRC / "gguf-py" / "gguf" / "scripts" / "gguf_dump.py"), str(out)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(SRC / "gguf-py")))
        (DUMPS / f"{family}-{outtype}.txt").write_text(dump.stdout + dump.stderr)
        result[outtype] = {"ok": True, "bytes": out.stat().st_size}
    return result


# --- reference logits ---------------------------------------------------------------------------------------------

class LlamaError(RuntimeError):
    pass


def kv_overrides(gguf: Path) -> list[str]:
    """Metadata llama.cpp's loader needs but the converter leaves out for these (tiny) fixtures.

    deepseek2 without q_lora_rank (DeepSeek-V2-Lite, Moonlight: q_proj instead of q_a/q_b): llama.cpp only treats
    a checkpoint as "lite" by its layer count (26, 27 or 48), and otherwise requires deepseek2.attention.q_lora_rank.
    The converter writes the key only when q_lora_rank is set. Overriding it to 0 at load time (the public
    llama_model_params.kv_overrides, as llama-cli's --override-kv) makes the loader take attn_q like the real Lite.
    """
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    out = []
    if arch == "deepseek2" and "deepseek2.attention.q_lora_rank" not in fields:
        out.append("deepseek2.attention.q_lora_rank=int:0")
    return out


def run_logits(gguf: Path, ids: list[int], kv: str, fa: str, n_gen: int) -> tuple[list[list[float]], list[int]]:
    import numpy as np

    with tempfile.TemporaryDirectory() as t:
        out = Path(t) / "logits.bin"
        ov = [a for o in kv_overrides(gguf) for a in ("--override-kv", o)]
        p = subprocess.run([str(TOOL), "logits", *ov, str(gguf), str(out), kv, fa, str(n_gen), str(N_THREADS)]
                           + [str(i) for i in ids], capture_output=True, text=True)
        if p.returncode != 0:
            raise LlamaError((p.stderr.strip().splitlines() or ["?"])[0])
        raw = out.read_bytes()
    n_pos, n_vocab = np.frombuffer(raw[:8], dtype="<i4")
    logits = np.frombuffer(raw[8:8 + 4 * n_pos * n_vocab], dtype="<f4").reshape(n_pos, n_vocab)
    rest = raw[8 + 4 * n_pos * n_vocab:]
    n = int(np.frombuffer(rest[:4], dtype="<i4")[0])
    greedy = np.frombuffer(rest[4:4 + 4 * n], dtype="<i4").tolist()
    return logits, greedy


def sig6(x: float) -> float:
    return float(f"{x:.6g}")


def reference(family: str) -> None:
    import numpy as np

    d = FIXTURES / family
    ref = json.loads((d / "reference.json").read_text())
    prompts = ref["prompts"]
    hf = {}
    if (d / "reference.safetensors").exists():  # transformers' logits (scripts that made the fixture)
        from safetensors.numpy import load_file
        hf = load_file(str(d / "reference.safetensors"))
    out = {
        "llama_cpp": llama_cpp_info(),
        "settings": {"n_threads": N_THREADS, "kv_cache_type": "f32", "flash_attn": "off",
                     "n_ctx": "128 requested (llama.cpp pads the KV cache to 256)",
                     "n_batch": 128, "n_ubatch": 128, "prompt_in_one_decode": True, "use_extra_bufts": True,
                     "greedy_tie_break": "lowest id", "backend": "CPU, GGML_NATIVE=ON",
                     "greedy_default_settings": "kv_cache_type f16, flash_attn auto (llama.cpp defaults)"},
        "prompts": prompts,
        "logits_round": "6 significant digits",
    }
    for outtype in OUTTYPES:
        gguf = d / f"model-{outtype}.gguf"
        if not gguf.exists():
            continue
        log(f"{family}: llama.cpp logits for {gguf.name}")
        entry = {"file": gguf.name, "kv_overrides": kv_overrides(gguf), "logits": [], "greedy": [],
                 "max_abs_diff_vs_hf": []}
        try:
            run_logits(gguf, prompts[0][:1], "f32", "off", 1)
        except LlamaError as e:  # e.g. a layout the converter writes but llama.cpp's loader rejects
            log(f"{family}: llama.cpp cannot run {gguf.name}: {e}")
            out[outtype] = {"file": gguf.name, "error": str(e)}
            continue
        for i, ids in enumerate(prompts):
            logits, greedy = run_logits(gguf, ids, "f32", "off", N_GEN)
            entry["logits"].append([[sig6(v) for v in row] for row in logits.tolist()])
            entry["greedy"].append(greedy)
            if f"logits.{i}" in hf:  # before rounding
                entry["max_abs_diff_vs_hf"].append(sig6(float(np.abs(logits - hf[f"logits.{i}"]).max())))
        entry["greedy_default_settings"] = run_logits(gguf, prompts[0], "f16", "auto", N_GEN)[1]
        entry["greedy_matches_hf"] = [g == h for g, h in zip(entry["greedy"], ref.get("greedy", []))]
        if outtype == OUTTYPES[0] and ref.get("prompt_texts"):
            toks = []
            for text in ref["prompt_texts"]:
                with tempfile.NamedTemporaryFile("wb", suffix=".txt") as f:
                    f.write(text.encode())
                    f.flush()
                    p = subprocess.run([str(TOOL), "tokenize", str(gguf), f.name], check=True,
                                       capture_output=True, text=True)
                toks.append([int(x) for x in p.stdout.strip().split(",") if x])
            out["llama_tokenize_prompt_texts"] = toks
            out["llama_tokenize_matches_hf"] = [t == p for t, p in zip(toks, prompts)]
        out[outtype] = entry
    if not any("logits" in out.get(t, {}) for t in OUTTYPES):
        log(f"{family}: no llama.cpp reference written")
        (d / "gguf_reference.json").unlink(missing_ok=True)
        return
    (d / "gguf_reference.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--convert-one"]:
        convert_one(*argv[1:4])
        return
    do_ref = "--no-reference" not in argv
    families = [a for a in argv if not a.startswith("--")] or FAMILIES
    ensure_source()
    if do_ref:
        ensure_tool()
    summary = {}
    for family in families:
        summary[family] = convert(family)
        if do_ref:
            reference(family)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
