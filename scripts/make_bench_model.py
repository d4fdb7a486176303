#!/usr/bin/env python3
"""Generates a random-weight Qwen3-MoE-shaped checkpoint large enough that decode is memory-bound
(hidden 1024, 16 layers, 32 experts top-4, expert width 512: ~0.9 B parameters), in f32 or bf16, with the
fixtures' tokenizer and chat template. Kept out of git (weights/bench-*/).

    /opt/refenv/bin/python scripts/make_bench_model.py [f32|bf16] [OUT_DIR]
"""
import os
import shutil
import sys

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    dtype = sys.argv[1] if len(sys.argv) > 1 else "f32"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "weights", f"bench-{dtype}")
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=384, hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=4,
        head_dim=64, intermediate_size=2048, moe_intermediate_size=512, num_experts=32, num_experts_per_tok=4,
        norm_topk_prob=True, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=2, pad_token_id=0,
    )
    model = Qwen3MoeForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    model.to(torch.float32 if dtype == "f32" else torch.bfloat16).save_pretrained(out, max_shard_size="2GB")
    fixture = os.path.join(ROOT, "tests", "fixtures", "qwen3_moe")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(fixture, f), out)
    total = sum(p.numel() for p in model.parameters())
    print(f"{out}: {total / 1e9:.2f} B parameters")


if __name__ == "__main__":
    main()
