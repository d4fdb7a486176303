#!/usr/bin/env python3
"""Floors and the closing table of `scripts/gpu-check.sh bench` (runs on the GPU machine).

  python3 scripts/gpu_summary.py bandwidth            # device copy bandwidth (torch), GB/s (read + write)
  python3 scripts/gpu_summary.py table OUT CONFIG     # each measured figure next to its floor
  python3 scripts/gpu_summary.py fp8 OUT CONFIG       # DeepSeek-V3-shaped layers, FP8 experts, batch 1

A step's floor is the bytes it must read at the bandwidth measured in the same run: attention, router and
lm-head weights, the distinct experts a batch routes to (uniform routing: E * (1 - (1 - k/E)^b) per layer)
and the batch's KV cache. A prompt's floor reads every weight once (and is compared with its FLOPs at the
dense bf16 peak, whichever is larger).
"""
import json
import os
import sys

BF16 = 2
BF16_PEAK_TFLOPS = 790.0  # measured once on this H200 (CUDA.md); only the prefill floor uses it


def bandwidth():
    import torch

    x = torch.empty(2**31, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 20
    print(f"copy_bandwidth_GBps {2 * x.numel() / seconds / 1e9:.0f}")


class Shape:
    def __init__(self, cfg):
        self.layers = cfg["num_hidden_layers"]
        h = self.hidden = cfg["hidden_size"]
        hd = cfg.get("head_dim", h // cfg["num_attention_heads"])
        q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
        self.experts, self.top_k = cfg["num_experts"], cfg["num_experts_per_tok"]
        inter = cfg["moe_intermediate_size"]
        self.attention = self.layers * (2 * h * q + 2 * h * kv) * BF16
        self.router = self.layers * h * self.experts * BF16
        self.lm_head = cfg["vocab_size"] * h * BF16
        self.expert = 3 * h * inter * BF16
        self.kv_per_token = self.layers * 2 * kv * BF16
        self.all_weights = (
            self.attention + self.router + 2 * self.lm_head + self.layers * self.experts * self.expert
        )
        self.active_params = (self.attention + self.router + self.lm_head) / BF16 + self.layers * self.top_k * self.expert / BF16

    def step_bytes(self, batch, context):
        distinct = self.experts * (1 - (1 - self.top_k / self.experts) ** batch)
        weights = self.attention + self.router + self.lm_head + self.layers * distinct * self.expert
        return weights + batch * context * self.kv_per_token

    def prefill_seconds(self, tokens, bw):
        memory = self.all_weights / bw
        compute = 2 * self.active_params * tokens / (BF16_PEAK_TFLOPS * 1e12)
        return max(memory, compute)


class MlaFp8Shape:
    """DeepSeek-V3-shaped layers as the GPU holds them: routed experts FP8 (one byte per weight, scales
    aside), everything else bf16; the KV cache one bf16 latent per token and layer."""

    def __init__(self, cfg):
        h = cfg["hidden_size"]
        nh, nope, rope, v = (cfg["num_attention_heads"], cfg["qk_nope_head_dim"],
                             cfg["qk_rope_head_dim"], cfg["v_head_dim"])
        ql, kvl = cfg.get("q_lora_rank"), cfg["kv_lora_rank"]
        q = h * ql + ql * nh * (nope + rope) if ql else h * nh * (nope + rope)
        attention = q + h * (kvl + rope) + kvl * nh * (nope + v) + nh * v * h
        self.layers = cfg["num_hidden_layers"]
        dense = min(cfg.get("first_k_dense_replace", 0), self.layers)
        moe = self.layers - dense
        self.experts, self.top_k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
        inter = cfg["moe_intermediate_size"]
        self.moe_layers = moe
        self.fixed = BF16 * (
            self.layers * attention
            + dense * 3 * h * cfg["intermediate_size"]
            + moe * (h * self.experts + cfg.get("n_shared_experts", 0) * 3 * h * inter)
            + cfg["vocab_size"] * h
        )
        self.expert = 3 * h * inter  # bytes at one byte per weight
        self.kv_per_token = self.layers * (kvl + rope) * BF16

    def step_bytes(self, batch, context):
        distinct = self.experts * (1 - (1 - self.top_k / self.experts) ** batch)
        return self.fixed + self.moe_layers * distinct * self.expert + batch * context * self.kv_per_token


def fp8(out, config):
    shape = MlaFp8Shape(json.load(open(config)))
    bw_line = open(os.path.join(out, "bandwidth.txt")).read().split()
    bw = float(bw_line[bw_line.index("copy_bandwidth_GBps") + 1]) * 1e9
    timings = read_jsonl(os.path.join(out, "generate-fp8.jsonl"))
    tps = median([t["decode_tokens_per_s"] for t in timings if t.get("decode_tokens_per_s")])
    floor = shape.step_bytes(1, 256 + 32) / bw * 1e3
    measured = f"{1e3 / tps:.2f} ms" if tps else "missing"
    fraction = f"{100 * floor * tps / 1e3:.0f}%" if tps else "-"
    print(f"| decode batch 1, {shape.layers} DeepSeek-V3 layers, FP8 experts | {measured} | {floor:.2f} ms | {fraction} |")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return None if n == 0 else (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2)


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip().startswith("{")]


def bench_run(path):
    if not os.path.exists(path):
        return None
    runs = json.load(open(path)).get("runs") or [None]
    return runs[0]


def table(out, config):
    shape = Shape(json.load(open(config)))
    bw_line = open(os.path.join(out, "bandwidth.txt")).read().split()
    bw = float(bw_line[bw_line.index("copy_bandwidth_GBps") + 1]) * 1e9
    rows = []

    def row(name, ms, floor_ms):
        if ms is None:
            rows.append((name, "missing", f"{floor_ms:.2f} ms", "-"))
        else:
            rows.append((name, f"{ms:.2f} ms", f"{floor_ms:.2f} ms", f"{100 * floor_ms / ms:.0f}%"))

    for graphs, fusions in (("off", "off"), ("off", "on"), ("on", "on")):
        name = f"generate-graphs-{graphs}-fusions-{fusions}.jsonl"
        timings = read_jsonl(os.path.join(out, name))
        tps = median([t["decode_tokens_per_s"] for t in timings if t.get("decode_tokens_per_s")])
        floor = shape.step_bytes(1, 1024 + 64) / bw * 1e3
        row(f"decode batch 1, in-process, graphs {graphs}, fusions {fusions}", 1e3 / tps if tps else None, floor)
    for c in (1, 8, 64):
        run = bench_run(os.path.join(out, f"bench-c{c}.json"))
        floor = shape.step_bytes(c, 512 + 64) / bw * 1e3
        row(f"decode batch {c}, HTTP TPOT (median)", run and run["tpot"]["median_ms"], floor)
        row(f"decode batch {c}, HTTP ITL (median)", run and run["itl"]["median_ms"], floor)
    run = bench_run(os.path.join(out, "bench-ttft1024.json"))
    row("TTFT, 1,024-token prompt (median)", run and run["ttft"]["median_ms"], shape.prefill_seconds(1024, bw) * 1e3)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s; floor = bytes a step must read / that bandwidth")
    print("| measure | measured | floor | floor / measured |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["bandwidth"]:
        bandwidth()
    elif sys.argv[1:2] == ["table"] and len(sys.argv) == 4:
        table(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["fp8"] and len(sys.argv) == 4:
        fp8(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
