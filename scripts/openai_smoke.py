#!/usr/bin/env python3
"""Smoke test with the official `openai` Python client against a running moeserve.

    moeserve serve --port 8000 &
    pip install openai
    python3 scripts/openai_smoke.py --base http://127.0.0.1:8000/v1            # chat + completions, streamed and not
    python3 scripts/openai_smoke.py --base ... --throughput 1,16 --max-tokens 64   # output tokens/s per concurrency

Exits non-zero when an answer is malformed.
"""
import argparse
import asyncio
import sys
import time

from openai import AsyncOpenAI, OpenAI


def smoke(base, model):
    client = OpenAI(base_url=base, api_key="unused")
    models = client.models.list()
    model = model or models.data[0].id
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens > 0
    streamed = ""
    usage = None
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            streamed += c.delta.content or ""
    assert streamed == chat.choices[0].message.content, "streamed and non-streamed greedy answers differ"
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens
    comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert comp.choices[0].finish_reason in ("stop", "length")
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True)
        if c.choices
    )
    assert text == comp.choices[0].text, "streamed and non-streamed completions differ"
    print(f"ok: model {model}, chat {chat.usage.completion_tokens} tokens, completion {comp.usage.completion_tokens} tokens")
    return model


async def one_stream(client, model, max_tokens, i):
    tokens = 0
    stream = await client.completions.create(
        model=model, prompt=f"Request {i}:", max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return tokens


async def throughput(base, model, concurrency, max_tokens):
    client = AsyncOpenAI(base_url=base, api_key="unused")
    await one_stream(client, model, 4, -1)  # warm-up
    start = time.perf_counter()
    counts = await asyncio.gather(*(one_stream(client, model, max_tokens, i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    total = sum(counts)
    print(f"concurrency {concurrency:3d}: {total} tokens in {elapsed:.2f} s = {total / elapsed:.1f} output tokens/s")
    return total / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", default=None)
    ap.add_argument("--throughput", default=None, help="comma-separated concurrency levels")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    model = smoke(args.base, args.model)
    if args.throughput:
        rates = [asyncio.run(throughput(args.base, model, int(c), args.max_tokens)) for c in args.throughput.split(",")]
        if len(rates) > 1:
            print(f"speed-up {rates[-1] / rates[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
