#!/usr/bin/env python3
"""Builds a small Kimi-style tiktoken tokenizer fixture and reference token ids from PyPI's `tiktoken`.

Kimi K2 / Moonlight ship `tiktoken.model` (base64 token + rank per line), the pre-tokenization pattern in
their `tokenization_kimi.py`, and special tokens (ids after the base vocabulary, 256 reserved) in
`tokenizer_config.json`. This script trains a ~700-token rank table on local text with tiktoken's own
educational BPE trainer, writes that layout to tests/fixtures/kimi_tokenizer/, and encodes a set of strings
with `tiktoken.Encoding` (allowed_special="all"). Run by hand: /opt/refenv/bin/python scripts/make_kimi_tokenizer.py
"""
import base64
import json
import os

import tiktoken
from tiktoken._educational import bpe_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "kimi_tokenizer")

KIMI_PAT = "|".join(
    [
        r"""[\p{Han}]+""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# Offsets of Kimi K2's named special tokens after the base vocabulary (the rest are reserved).
SPECIAL = {0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
           6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>",
           17: "<|im_middle|>", 254: "[UNK]", 255: "[PAD]"}

STRINGS = [
    "Hello, world! It's a test of the tokenizer.",
    "The quick brown fox jumps over 1234567 lazy dogs; they'll see.",
    "深度求索和月之暗面都在北京。",
    "Mixed 中文 and English text, 混合文本!",
    "Emoji: 🎉🚀👍🏽 and accents: café, naïve, Ünïcödé.",
    "digits 3.14159 2026-11-22 000123",
    "whitespace    runs\t\ttabs\n\n\nnewlines   \n  end  ",
    "<|im_user|>user<|im_middle|>What is 2+2?<|im_end|><|im_assistant|>assistant<|im_middle|>",
    "CAPS LOCK SHOUTING and camelCaseWords and snake_case_words",
    "",
]


def main():
    os.makedirs(OUT, exist_ok=True)
    corpus = ""
    lic = "/usr/share/common-licenses"
    for name in sorted(os.listdir(lic)):
        path = os.path.join(lic, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="ignore") as f:
                corpus += f.read()[:4000]
    corpus += " 深度求索 月之暗面 北京 中文 混合 文本 " * 20
    # Python's `regex` module (used by the educational trainer) does not read the `&&` class intersections;
    # a simpler split is enough to learn merges. Encoding below uses KIMI_PAT through tiktoken's Rust core.
    train_pat = r"""[\p{Han}]+|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    enc = bpe_train(data=corpus, vocab_size=700, pat_str=train_pat)
    ranks = enc.mergeable_ranks if hasattr(enc, "mergeable_ranks") else enc
    with open(os.path.join(OUT, "tiktoken.model"), "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    base = len(ranks)
    specials = {SPECIAL.get(i, f"<|reserved_token_{i}|>"): base + i for i in range(256)}
    added = {str(base + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for i, c in SPECIAL.items()}
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"added_tokens_decoder": added, "bos_token": "[BOS]", "eos_token": "[EOS]",
                   "pad_token": "[PAD]", "unk_token": "[UNK]", "tokenizer_class": "TikTokenTokenizer",
                   "model_max_length": 1048576}, f, indent=1)
    encoding = tiktoken.Encoding(name="kimi-fixture", pat_str=KIMI_PAT, mergeable_ranks=ranks, special_tokens=specials)
    refs = [{"text": s, "ids": encoding.encode(s, allowed_special="all")} for s in STRINGS]
    for r in refs:
        assert encoding.decode(r["ids"]) == r["text"]
    with open(os.path.join(OUT, "references.json"), "w") as f:
        json.dump(refs, f, indent=1, ensure_ascii=False)
    print(f"{base} base tokens, {len(refs)} references")


if __name__ == "__main__":
    main()
