#!/usr/bin/env python3
"""Builds the golden fixtures and the embedded default model with HF transformers (CPU, float32).

Run by hand, never by CI (CI needs neither Python nor torch). Facts about the reference stack are in
../shared/CUDA.md; the environment used:

    python3 -m venv /opt/refenv
    /opt/refenv/bin/pip install --no-deps torch==2.15.0 <the nvidia-* wheels listed in ../shared/CUDA.md>
    /opt/refenv/bin/pip install transformers==5.23.0 safetensors numpy tokenizers jinja2 ...
    /opt/refenv/bin/python scripts/make_fixtures.py

For each family it writes tests/fixtures/<name>/ holding a tiny random-weight checkpoint as the hub ships
one (hub-style config.json, >= 2 safetensors shards + index, tokenizer.json, tokenizer_config.json with a
chat template, generation_config.json) and the references computed by transformers from the checkpoint
reloaded from disk:

    reference.json              prompts (token ids), greedy continuations (16 tokens) and their logprobs,
                                top-1/top-2 gaps, the left-padded batch layout
    reference.safetensors       logits.{i}: all-position logits [L_i, V] of prompt i;
                                batch_last: last-token logits [B, V] of the left-padded batch

weights/default/ receives the embedded default model (random weights, meaningless text).
"""
import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
VOCAB = 384
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
PROMPTS = [
    "The quick brown fox",
    "Permission is hereby granted, free of charge, to any person obtaining a copy",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
GREEDY_TOKENS = 16


def corpus():
    texts = []
    lic = "/usr/share/common-licenses"
    for name in sorted(os.listdir(lic)):
        path = os.path.join(lic, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="ignore") as f:
                texts.append(f.read())
    return texts


def build_tokenizer(out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_tokenizer(fast, out_dir, separate_template):
    fast.save_pretrained(out_dir)
    # Hub layout: chat_template inside tokenizer_config.json (older checkpoints) or chat_template.jinja.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    jinja = os.path.join(out_dir, "chat_template.jinja")
    if separate_template:
        cfg.pop("chat_template", None)
        with open(jinja, "w") as f:
            f.write(CHAT_TEMPLATE)
    else:
        cfg["chat_template"] = CHAT_TEMPLATE
        if os.path.exists(jinja):
            os.remove(jinja)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)


def randomise(model, gen, router_scale):
    """Replaces the (tiny, near-uniform) default init so that every parameter matters and routing is decided."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm" in name.split(".")[-2]:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.dim() == 2:
                fan_in = p.shape[1]
                scale = fan_in ** -0.5
                if name.endswith("gate.weight") and "shared_expert" not in name:
                    scale *= router_scale
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.2)


def hub_config(path, family):
    """Rewrites transformers 5's config.json to the layout real hub checkpoints have."""
    with open(path) as f:
        cfg = json.load(f)
    rope = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in rope.items() if k not in ("rope_theta",)}
        scaling["type"] = scaling.pop("rope_type")
        cfg["rope_scaling"] = scaling
    else:
        cfg["rope_scaling"] = None
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    if family == "qwen3_moe" and "num_local_experts" in cfg:
        cfg["num_experts"] = cfg.pop("num_local_experts")
    if family == "qwen2_moe":
        cfg.pop("qkv_bias", None)
        cfg.pop("layer_types", None)
    if family in ("deepseek_v2", "deepseek_v3"):
        # Hub DeepSeek configs have neither; transformers 5 derives them.
        cfg.pop("head_dim", None)
        cfg.pop("qk_head_dim", None)
        cfg.pop("pretraining_tp", None)
        cfg["moe_layer_freq"] = 1
        cfg.setdefault("num_nextn_predict_layers", 0)
        if family == "deepseek_v3":
            cfg["scoring_func"] = "sigmoid"
            cfg["topk_method"] = "noaux_tc"
        else:
            cfg["scoring_func"] = "softmax"
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def generation_config(out_dir, fast):
    eos = [fast.convert_tokens_to_ids("<|im_end|>"), fast.convert_tokens_to_ids("<|endoftext|>")]
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": eos[1], "eos_token_id": eos, "do_sample": False}, f, indent=2)


@torch.no_grad()
def references(model, prompts):
    ref = {"prompts": prompts, "greedy": [], "greedy_logprobs": [], "min_greedy_gap": [], "min_route_gap": None}
    tensors = {}
    for i, ids in enumerate(prompts):
        x = torch.tensor([ids])
        logits = model(x).logits[0]
        tensors[f"logits.{i}"] = logits.contiguous()
        seq = list(ids)
        out, lps, gaps = [], [], []
        for _ in range(GREEDY_TOKENS):
            last = model(torch.tensor([seq])).logits[0, -1]
            top = torch.topk(last, 2)
            tok = int(top.indices[0])
            gaps.append(float(top.values[0] - top.values[1]))
            lps.append(float(torch.log_softmax(last, -1)[tok]))
            out.append(tok)
            seq.append(tok)
        ref["greedy"].append(out)
        ref["greedy_logprobs"].append(lps)
        ref["min_greedy_gap"].append(min(gaps))
    # Left-padded batch with explicit positions: what a padded server batch would compute.
    pad = 0
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = model(ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    tensors["batch_last"] = batch.contiguous()
    ref["batch_pad_id"] = pad
    return ref, tensors


def route_gap(model, prompts):
    """Smallest margin of any routing decision over all tokens and layers, in the space the router decides in:
    logits for softmax routers (monotonic), biased sigmoid scores for DeepSeek-V3; group choices included."""
    gaps = []
    hooks = []
    cfg = model.config
    k = cfg.num_experts_per_tok
    kind = cfg.model_type

    def margin(values, n):
        top = torch.topk(values, n + 1, -1).values
        return float((top[:, n - 1] - top[:, n]).min())

    def hook(mod, inp, _out):
        x = inp[0].reshape(-1, inp[0].shape[-1]).float()
        logits = torch.nn.functional.linear(x, mod.weight.float())
        if kind == "deepseek_v3":
            choice = logits.sigmoid() + mod.e_score_correction_bias
            ng, tg = cfg.n_group, cfg.topk_group
            grouped = choice.view(-1, ng, choice.shape[-1] // ng)
            gscore = grouped.topk(2, -1).values.sum(-1)
            if tg < ng:
                gaps.append(margin(gscore, tg))
            keep = torch.zeros_like(gscore).scatter_(1, gscore.topk(tg, -1).indices, 1).bool()
            choice = choice.masked_fill(~keep.repeat_interleave(choice.shape[-1] // ng, 1), float("-inf"))
            gaps.append(margin(choice, k))
        elif kind == "deepseek_v2" and cfg.topk_method == "group_limited_greedy":
            ng, tg = cfg.n_group, cfg.topk_group
            gscore = logits.view(-1, ng, logits.shape[-1] // ng).max(-1).values
            gaps.append(margin(gscore, tg))
            keep = torch.zeros_like(gscore).scatter_(1, gscore.topk(tg, -1).indices, 1).bool()
            gaps.append(margin(logits.masked_fill(~keep.repeat_interleave(logits.shape[-1] // ng, 1), float("-inf")), k))
        else:
            gaps.append(margin(logits, k))

    for name, mod in model.named_modules():
        if name.endswith(".gate") and hasattr(mod, "weight") and "shared" not in name:
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for p in prompts:
            model(torch.tensor([p]))
    for h in hooks:
        h.remove()
    return min(gaps) if gaps else None


FAMILIES = {
    "mixtral": (
        MixtralConfig,
        MixtralForCausalLM,
        dict(
            intermediate_size=48,
            num_local_experts=8,
            num_experts_per_tok=2,
            rope_theta=1e6,
            sliding_window=12,
            max_position_embeddings=512,
        ),
        dict(dtype=torch.float32, separate_template=False, seed=11),
    ),
    "qwen2_moe": (
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
        dict(
            num_hidden_layers=3,
            intermediate_size=80,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
            max_position_embeddings=512,
        ),
        dict(dtype=torch.float32, separate_template=True, seed=12),
    ),
    "qwen3_moe": (
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
        dict(
            head_dim=16,
            intermediate_size=80,
            moe_intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
                "rope_theta": 1e6,
            },
            max_position_embeddings=128,
        ),
        dict(dtype=torch.bfloat16, separate_template=False, seed=13),
    ),
    "olmoe": (
        OlmoeConfig,
        OlmoeForCausalLM,
        dict(
            intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            clip_qkv=4.0,
            max_position_embeddings=512,
        ),
        dict(dtype=torch.float32, separate_template=False, seed=14),
    ),
    "kimi_k2": (
        DeepseekV3Config,
        DeepseekV3ForCausalLM,
        dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=96,
            moe_intermediate_size=32,
            n_routed_experts=16,
            num_experts_per_tok=4,
            n_shared_experts=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.827,
            norm_topk_prob=True,
            first_k_dense_replace=1,
            q_lora_rank=48,
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            rope_interleave=True,
            num_nextn_predict_layers=0,
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "beta_fast": 32,
                "beta_slow": 1,
                "rope_theta": 50000.0,
            },
            max_position_embeddings=128,
        ),
        dict(dtype=torch.bfloat16, separate_template=False, seed=15, model_type="kimi_k2"),
    ),
    "moonlight": (
        DeepseekV3Config,
        DeepseekV3ForCausalLM,
        dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=96,
            moe_intermediate_size=32,
            n_routed_experts=16,
            num_experts_per_tok=4,
            n_shared_experts=2,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=2.446,
            norm_topk_prob=True,
            first_k_dense_replace=1,
            q_lora_rank=None,
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            rope_interleave=True,
            num_nextn_predict_layers=0,
            rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
            max_position_embeddings=512,
        ),
        dict(dtype=torch.float32, separate_template=False, seed=16),
    ),
    "deepseek_v2_lite": (
        DeepseekV2Config,
        DeepseekV2ForCausalLM,
        dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=96,
            moe_intermediate_size=32,
            n_routed_experts=16,
            num_experts_per_tok=4,
            n_shared_experts=2,
            topk_method="greedy",
            routed_scaling_factor=1.0,
            first_k_dense_replace=1,
            q_lora_rank=None,
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
                "mscale": 0.707,
                "mscale_all_dim": 0.707,
                "beta_fast": 32,
                "beta_slow": 1,
                "rope_theta": 10000.0,
            },
            max_position_embeddings=128,
        ),
        dict(dtype=torch.float32, separate_template=False, seed=17),
    ),
    "deepseek_v2": (
        DeepseekV2Config,
        DeepseekV2ForCausalLM,
        dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=96,
            moe_intermediate_size=32,
            n_routed_experts=16,
            num_experts_per_tok=4,
            n_shared_experts=2,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            routed_scaling_factor=16.0,
            first_k_dense_replace=1,
            q_lora_rank=48,
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            max_position_embeddings=512,
        ),
        dict(dtype=torch.float32, separate_template=True, seed=18),
    ),
}


def make_checkpoint(out_dir, fast, base, extra, opts, seed):
    cfg_cls, model_cls = base
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    special = {t: fast.convert_tokens_to_ids(t) for t in SPECIALS}
    kwargs = dict(
        vocab_size=len(fast),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=special["<|endoftext|>"],
        eos_token_id=special["<|im_end|>"],
        pad_token_id=special["<|endoftext|>"],
    )
    kwargs.update(extra)
    config = cfg_cls(**kwargs)
    model = model_cls(config).eval()
    randomise(model, gen, router_scale=opts.get("router_scale", 2.0))
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    model.to(opts["dtype"]).save_pretrained(out_dir, max_shard_size=opts.get("shard", "150KB"))
    hub_config(os.path.join(out_dir, "config.json"), config.model_type)
    write_tokenizer(fast, out_dir, opts["separate_template"])
    generation_config(out_dir, fast)
    shards = [f for f in os.listdir(out_dir) if f.endswith(".safetensors")]
    assert len(shards) >= 2, f"{out_dir}: expected >= 2 shards, got {shards}"

    # References from the checkpoint reloaded from disk, in float32.
    reloaded = model_cls.from_pretrained(out_dir, dtype=torch.float32).eval()
    original = {k: v.float() for k, v in model.state_dict().items()}
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, original[k]), f"{out_dir}: {k} differs after reload (config rewrite?)"
    return reloaded


def build(name, out_dir, fast, base, extra, opts, make_refs=True):
    prompts = [fast.encode(p) for p in PROMPTS] + [[5, 17, 200, 42, 42, 7, 300, 11]]
    # Retry seeds until routing and greedy choices are decided well above float noise.
    for attempt in range(50):
        seed = opts["seed"] + 1000 * attempt
        reloaded = make_checkpoint(out_dir, fast, base, extra, opts, seed)
        if not make_refs:
            return
        ref, tensors = references(reloaded, prompts)
        gap = route_gap(reloaded, [p + g for p, g in zip(prompts, ref["greedy"])])
        if gap > 2e-4 and min(ref["min_greedy_gap"]) > 2e-3:
            break
    else:
        raise SystemExit(f"{name}: no seed gave decided routing")
    ref["min_route_gap"] = gap
    ref["seed"] = seed
    if opts.get("model_type"):
        # Kimi K2 ships model_type "kimi_k2" with DeepseekV3ForCausalLM; transformers only loads deepseek_v3.
        cfg_path = os.path.join(out_dir, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["model_type"] = opts["model_type"]
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
    ref["family"] = name
    ref["prompt_texts"] = PROMPTS
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
    print(f"{name}: seed={seed} route_gap={gap:.2e} greedy_gap={min(ref['min_greedy_gap']):.2e}")


def main():
    fast = build_tokenizer(FIXTURES)
    only = sys.argv[1:]
    for name, (cfg_cls, model_cls, extra, opts) in FAMILIES.items():
        if only and name not in only:
            continue
        build(name, os.path.join(FIXTURES, name), fast, (cfg_cls, model_cls), extra, opts)
    if not only or "default" in only:
        # The embedded default model: Qwen3-MoE layout, bf16, a little larger, references not needed.
        extra = dict(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=16,
            intermediate_size=256,
            moe_intermediate_size=64,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            max_position_embeddings=4096,
        )
        build(
            "default",
            os.path.join(ROOT, "weights", "default"),
            fast,
            (Qwen3MoeConfig, Qwen3MoeForCausalLM),
            extra,
            dict(dtype=torch.bfloat16, separate_template=False, seed=7, shard="1MB"),
            make_refs=False,
        )
        print("default: written")


if __name__ == "__main__":
    main()
