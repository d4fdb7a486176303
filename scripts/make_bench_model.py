#!/usr/bin/env python3
"""Generates a random-weight Qwen3-MoE-shaped checkpoint large enough that decode is memory-bound
(hidden 1024, 16 layers, 32 experts top-4, expert width 512: ~0.95 B parameters), in f32 or bf16, with a real
tokenizer: SmolLM2's byte-level BPE (49,152 tokens), taken from the demo model that `scripts/demo-model.sh`
builds (weights/demo). llama.cpp's converter recognises that tokenizer ("smollm" pre-tokenizer), so the same
checkpoint can be converted to GGUF for the side-by-side benchmark. Kept out of git (weights/bench-*/).

    scripts/demo-model.sh            # once: weights/demo (tokenizer source)
    /opt/refenv/bin/python scripts/make_bench_model.py [f32|bf16] [OUT_DIR] [TOKENIZER_DIR]
"""
import json
import os
import shutil
import sys

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    dtype = sys.argv[1] if len(sys.argv) > 1 else "f32"
    if dtype not in ("f32", "bf16"):
        sys.exit(f"dtype must be f32 or bf16, not {dtype}")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "weights", f"bench-{dtype}")
    tok_dir = sys.argv[3] if len(sys.argv) > 3 else os.path.join(ROOT, "weights", "demo")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        sys.exit(f"{tok_dir}/tokenizer.json is missing: run scripts/demo-model.sh first")
    with open(os.path.join(tok_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    vocab = max(len(tok["model"]["vocab"]), 1 + max(t["id"] for t in tok.get("added_tokens", [{"id": 0}])))
    with open(os.path.join(tok_dir, "generation_config.json")) as f:
        gen = json.load(f)
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=vocab, hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=4,
        head_dim=64, intermediate_size=2048, moe_intermediate_size=512, num_experts=32, num_experts_per_tok=4,
        norm_topk_prob=True, max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=gen["bos_token_id"], eos_token_id=gen["eos_token_id"], pad_token_id=gen["eos_token_id"],
    )
    model = Qwen3MoeForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    model.to(torch.float32 if dtype == "f32" else torch.bfloat16).save_pretrained(out, max_shard_size="2GB")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(tok_dir, f), out)
    total = sum(p.numel() for p in model.parameters())
    print(f"{out}: {total / 1e9:.2f} B parameters, vocabulary {vocab}")


if __name__ == "__main__":
    main()
