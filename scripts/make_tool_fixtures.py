#!/usr/bin/env python3
"""Golden fixtures for tool calling with real chat templates (tests/fixtures/chat/tools/).

1. references.json: each template in tests/fixtures/chat/tools/<name>.jinja rendered by transformers' own
   `apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False, **kwargs)` on a
   tokenizer built offline around the template (a one-token WordLevel model: only the template machinery and
   the special tokens map matter). Conversations: tools on a user turn, assistant `tool_calls` (arguments as a
   dict and as a JSON string, content null and "") followed by `role: "tool"` results, two parallel calls, a
   system message with tools, and per-template extras (Qwen3 thinking, DeepSeek-V3.1 thinking, Kimi's tool
   `name`). A conversation the template rejects is recorded with "error" (jinja2's message) instead of
   "rendered": the Rust renderer should fail on it too, though its message will differ.
   transformers 5's apply_chat_template drops every null-valued top-level message key first (so OpenAI's
   `"content": null` beside `tool_calls` reaches the template as an undefined `content`): entries say
   `"null_keys": "dropped"`. For the DeepSeek templates, whose outcome depends on it, the `*_null` cases are also
   rendered with the keys kept (render_jinja_template directly, as transformers 4.x did): `"null_keys": "kept"`.
2. outputs.json: raw model outputs in each model's tool-call format with the expected parse, checked here by
   reference parsers that follow vLLM's tool parsers (hermes, kimi_k2, deepseek_v3, deepseek_v31, mistral).

See tests/fixtures/chat/tools/SOURCES.md for where the templates come from and the call grammars. Run by hand
(no network needed): /opt/refenv/bin/python scripts/make_tool_fixtures.py
"""
import copy
import json
import os
import re

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "tests", "fixtures", "chat", "tools")

DS_BOS, DS_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

# name -> (bos_token, eos_token) as the model's tokenizer_config.json sets them (None: unset).
TEMPLATES = {
    "qwen3": (None, "<|im_end|>"),
    "qwen2_5": (None, "<|im_end|>"),
    "kimi_k2": ("[BOS]", "[EOS]"),
    "deepseek_v3": (DS_BOS, DS_EOS),
    "deepseek_v3_1": (DS_BOS, DS_EOS),
    "mistral": ("<s>", "</s>"),
    "mistral_nemo": ("<s>", "</s>"),
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_flights",
            "description": "Search flights between two airports (prix en €).",
            "parameters": {
                "type": "object",
                "properties": {
                    "origin": {"type": "string"},
                    "destination": {"type": "string"},
                    "passengers": {
                        "type": "object",
                        "properties": {"adults": {"type": "integer"}, "children": {"type": "integer"}},
                        "required": ["adults"],
                    },
                    "cabin": {"type": "string", "enum": ["economy", "business"]},
                },
                "required": ["origin", "destination", "passengers"],
            },
        },
    },
]

WEATHER_ARGS = {"location": "Paris, France", "unit": "celsius"}
FLIGHT_ARGS = {"origin": "CDG", "destination": "NRT", "passengers": {"adults": 2, "children": 1}, "cabin": "economy"}
# The string form is compact on purpose: a template that passes a string through shows it verbatim, one that
# applies tojson to a dict shows Python's ", " / ": " spacing, and one that applies tojson to the string shows
# it quoted (double-encoded).
WEATHER_ARGS_STR = json.dumps(WEATHER_ARGS, separators=(",", ":"))
FLIGHT_ARGS_STR = json.dumps(FLIGHT_ARGS, separators=(",", ":"))

# Mistral templates require alphanumeric ids of length 9; Kimi's prints the ids verbatim, and the model was
# trained on ids of the form functions.NAME:INDEX; the other templates ignore ids.
IDS = {"kimi_k2": ("functions.get_weather:0", "functions.search_flights:1")}
DEFAULT_IDS = ("call00001", "call00002")


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


def user(text):
    return {"role": "user", "content": text}


def tool_result(id_, text):
    return {"role": "tool", "tool_call_id": id_, "content": text}


WEATHER_RESULT = '{"temperature": 21, "condition": "sunny"}'
FLIGHT_RESULT = '{"flights": [{"number": "AF276", "price_eur": 812}]}'


def single_call(id1, args, content):
    return [
        user("What's the weather in Paris?"),
        {"role": "assistant", "content": content, "tool_calls": [call(id1, "get_weather", args)]},
        tool_result(id1, WEATHER_RESULT),
    ]


def parallel_calls(ids, weather, flights, content):
    return [
        user("Weather in Paris, and flights CDG to Tokyo for 2 adults and a child?"),
        {
            "role": "assistant",
            "content": content,
            "tool_calls": [call(ids[0], "get_weather", weather), call(ids[1], "search_flights", flights)],
        },
        tool_result(ids[0], WEATHER_RESULT),
        tool_result(ids[1], FLIGHT_RESULT),
    ]


def cases(name):
    """(case, messages, tools, extra template kwargs, arguments form or None) for one template. Content null is
    what OpenAI clients send with tool_calls; transformers drops null-valued message keys before rendering."""
    ids = IDS.get(name, DEFAULT_IDS)
    out = [
        ("a_tools", [user("What's the weather in Paris?")], TOOLS, {}, None),
        ("b_dict_null", single_call(ids[0], WEATHER_ARGS, None), None, {}, "dict"),
        ("b_string_null", single_call(ids[0], WEATHER_ARGS_STR, None), None, {}, "string"),
        ("b_dict_empty", single_call(ids[0], WEATHER_ARGS, ""), TOOLS, {}, "dict"),
        ("b_string_empty", single_call(ids[0], WEATHER_ARGS_STR, ""), None, {}, "string"),
        ("c_parallel_dict_null", parallel_calls(ids, WEATHER_ARGS, FLIGHT_ARGS, None), None, {}, "dict"),
        ("c_parallel_string_null", parallel_calls(ids, WEATHER_ARGS_STR, FLIGHT_ARGS_STR, None), None, {}, "string"),
        ("c_parallel_dict_empty", parallel_calls(ids, WEATHER_ARGS, FLIGHT_ARGS, ""), None, {}, "dict"),
        ("c_parallel_string_empty", parallel_calls(ids, WEATHER_ARGS_STR, FLIGHT_ARGS_STR, ""), None, {}, "string"),
        ("c_parallel_text_dict", parallel_calls(ids, WEATHER_ARGS, FLIGHT_ARGS, "Let me check both."), None, {}, "dict"),
        ("c_parallel_text_string", parallel_calls(ids, WEATHER_ARGS_STR, FLIGHT_ARGS_STR, "Let me check both."), None, {},
         "string"),
        (
            "d_system_tools",
            [{"role": "system", "content": "You are a travel assistant."}, user("Any flights CDG to NRT tomorrow?")],
            TOOLS,
            {},
            None,
        ),
    ]
    if name in ("mistral", "mistral_nemo", "kimi_k2"):
        # OpenAI-style ids: rejected by Mistral's templates, printed verbatim by Kimi's.
        out.append(("b_openai_ids", single_call("call_1", WEATHER_ARGS, ""), None, {}, "dict"))
    if name == "qwen3":
        out += [
            ("e_no_thinking", [user("What's the weather in Paris?")], TOOLS, {"enable_thinking": False}, None),
            (
                "e_reasoning_content",
                [
                    user("What's the weather in Paris?"),
                    {
                        "role": "assistant",
                        "content": "",
                        "reasoning_content": "The user wants the weather; call get_weather.",
                        "tool_calls": [call(ids[0], "get_weather", WEATHER_ARGS)],
                    },
                    tool_result(ids[0], WEATHER_RESULT),
                    {"role": "assistant", "content": "It is 21 °C and sunny.", "reasoning_content": "Summarise."},
                    user("Thanks! And tomorrow?"),
                ],
                TOOLS,
                {},
                "dict",
            ),
            (
                "e_reasoning_after_tool",
                [
                    user("What's the weather in Paris?"),
                    {
                        "role": "assistant",
                        "content": "",
                        "reasoning_content": "The user wants the weather; call get_weather.",
                        "tool_calls": [call(ids[0], "get_weather", WEATHER_ARGS)],
                    },
                    tool_result(ids[0], WEATHER_RESULT),
                ],
                TOOLS,
                {},
                "dict",
            ),
            (
                "e_inline_think",
                [
                    user("What's the weather in Paris?"),
                    {
                        "role": "assistant",
                        "content": "<think>\nNeed the weather tool.\n</think>\n\n",
                        "tool_calls": [call(ids[0], "get_weather", WEATHER_ARGS_STR)],
                    },
                    tool_result(ids[0], WEATHER_RESULT),
                ],
                None,
                {"enable_thinking": False},
                "string",
            ),
        ]
    if name == "deepseek_v3_1":
        out.append(("e_thinking", [user("What's the weather in Paris?")], None, {"thinking": True}, None))
    if name == "kimi_k2":
        msgs = single_call(ids[0], WEATHER_ARGS, "")
        msgs[2] = {**msgs[2], "name": "get_weather"}
        out.append(("e_tool_name", msgs, None, {}, "dict"))
    return out


def tokenizer(template, bos, eos):
    model = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=model, chat_template=template, **special)


def args_check(rendered, form):
    """How the call's arguments came out: 'object' (valid JSON object text), 'double-encoded' (a JSON string
    literal holding the JSON), or 'missing' (not rendered at all)."""
    as_dict = json.dumps(WEATHER_ARGS, ensure_ascii=False)
    if form == "string":
        if json.dumps(WEATHER_ARGS_STR) in rendered:
            return "double-encoded"
        return "object" if WEATHER_ARGS_STR in rendered else "missing"
    if json.dumps(as_dict) in rendered:
        return "double-encoded"
    return "object" if as_dict in rendered else "missing"


# Templates whose outcome changes when null-valued message keys are kept (as transformers 4.x and a direct
# render_jinja_template call do) instead of dropped (as transformers 5's apply_chat_template does).
KEEP_NULL = ("deepseek_v3", "deepseek_v3_1")


def render(tok, template, messages, tools, kwargs, keep_null):
    messages, tools = copy.deepcopy(messages), copy.deepcopy(tools)
    if not keep_null:
        return tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False, **kwargs)
    # apply_chat_template's own path minus its "drop the keys whose value is None" step.
    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=template,
        add_generation_prompt=True,
        **{**tok.special_tokens_map, **kwargs},
    )
    return rendered[0]


def render_references():
    refs = []
    summary = {}
    for name, (bos, eos) in TEMPLATES.items():
        with open(os.path.join(DIR, f"{name}.jinja")) as f:
            template = f.read()
        tok = tokenizer(template, bos, eos)
        for case, messages, tools, kwargs, form in cases(name):
            modes = [False, True] if (name in KEEP_NULL and case.endswith("_null")) else [False]
            for keep_null in modes:
                entry = {
                    "template": name,
                    "case": case,
                    "null_keys": "kept" if keep_null else "dropped",
                    "messages": messages,
                    "tools": tools,
                    "kwargs": kwargs,
                    "bos_token": bos,
                    "eos_token": eos,
                }
                try:
                    rendered = render(tok, template, messages, tools, kwargs, keep_null)
                    entry["rendered"] = rendered
                    outcome = args_check(rendered, form) if form else "ok"
                except Exception as e:  # the template rejected the conversation
                    entry["error"] = f"{type(e).__name__}: {e}"
                    outcome = "error"
                if form:
                    entry["arguments_form"] = form
                    entry["arguments_rendered"] = outcome
                summary.setdefault(name, {})[case + ("/kept" if keep_null else "")] = outcome
                refs.append(entry)
    return refs, summary


# ---- model outputs -------------------------------------------------------------------------------------------

QWEN_CALL = '<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'
W = json.dumps(WEATHER_ARGS)
F = json.dumps(FLIGHT_ARGS)
W_UNI = {"location": "São Paulo, Brasil", "unit": "celsius"}


def qwen_call(name, args):
    return QWEN_CALL.format(name=name, args=json.dumps(args, ensure_ascii=False))


def ds3_call(name, args):
    return f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{json.dumps(args, ensure_ascii=False)}\n```<｜tool▁call▁end｜>"


def ds31_call(name, args):
    return f"<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{json.dumps(args, ensure_ascii=False)}<｜tool▁call▁end｜>"


def kimi_call(name, idx, args):
    return f"<|tool_call_begin|>functions.{name}:{idx}<|tool_call_argument_begin|>{json.dumps(args, ensure_ascii=False)}<|tool_call_end|>"


def tc(name, args, id_=None):
    out = {"name": name, "arguments": args}
    if id_ is not None:
        out["id"] = id_
    return out


OUTPUTS = [
    # Hermes style: Qwen2.5, Qwen2-MoE, Qwen3 (generation stops at <|im_end|>, which is not part of the text).
    {"format": "qwen", "text": qwen_call("get_weather", WEATHER_ARGS), "content": None,
     "tool_calls": [tc("get_weather", WEATHER_ARGS)]},
    {"format": "qwen", "text": qwen_call("get_weather", WEATHER_ARGS) + "\n" + qwen_call("search_flights", FLIGHT_ARGS),
     "content": None, "tool_calls": [tc("get_weather", WEATHER_ARGS), tc("search_flights", FLIGHT_ARGS)]},
    {"format": "qwen", "text": "I'll look that up for you.\n" + qwen_call("get_weather", W_UNI), "content": "I'll look that up for you.",
     "tool_calls": [tc("get_weather", W_UNI)]},
    {"format": "qwen", "text": "It is 21 °C and sunny in Paris.", "content": "It is 21 °C and sunny in Paris.", "tool_calls": []},
    # Braces, quotes and a newline inside a JSON string: parse the JSON, don't match braces.
    {"format": "qwen", "text": qwen_call("search_notes", {"query": "fn main() {\n  println!(\"}\");\n}"}), "content": None,
     "tool_calls": [tc("search_notes", {"query": "fn main() {\n  println!(\"}\");\n}"})]},
    {"format": "qwen", "text": "<think>\nThe user wants the weather, so I call get_weather.\n</think>\n\n" + qwen_call("get_weather", WEATHER_ARGS),
     "reasoning_content": "The user wants the weather, so I call get_weather.", "content": None,
     "tool_calls": [tc("get_weather", WEATHER_ARGS)]},
    # Kimi K2 (generation stops at <|im_end|>). The index after ':' counts calls across the whole conversation.
    {"format": "kimi_k2", "text": "<|tool_calls_section_begin|>" + kimi_call("get_weather", 0, WEATHER_ARGS) + "<|tool_calls_section_end|>",
     "content": None, "tool_calls": [tc("get_weather", WEATHER_ARGS, "functions.get_weather:0")]},
    {"format": "kimi_k2", "text": "<|tool_calls_section_begin|>" + kimi_call("get_weather", 0, WEATHER_ARGS)
     + kimi_call("search_flights", 1, FLIGHT_ARGS) + "<|tool_calls_section_end|>", "content": None,
     "tool_calls": [tc("get_weather", WEATHER_ARGS, "functions.get_weather:0"),
                    tc("search_flights", FLIGHT_ARGS, "functions.search_flights:1")]},
    {"format": "kimi_k2", "text": "Let me check the weather first.<|tool_calls_section_begin|>" + kimi_call("get_weather", 2, W_UNI)
     + "<|tool_calls_section_end|>", "content": "Let me check the weather first.",
     "tool_calls": [tc("get_weather", W_UNI, "functions.get_weather:2")]},
    {"format": "kimi_k2", "text": "It is 21 °C and sunny in Paris.", "content": "It is 21 °C and sunny in Paris.", "tool_calls": []},
    # DeepSeek-V3 / R1 (generation stops at <｜end▁of▁sentence｜>).
    {"format": "deepseek_v3", "text": "<｜tool▁calls▁begin｜>" + ds3_call("get_weather", WEATHER_ARGS) + "<｜tool▁calls▁end｜>",
     "content": None, "tool_calls": [tc("get_weather", WEATHER_ARGS)]},
    {"format": "deepseek_v3", "text": "<｜tool▁calls▁begin｜>" + ds3_call("get_weather", WEATHER_ARGS) + "\n"
     + ds3_call("search_flights", FLIGHT_ARGS) + "<｜tool▁calls▁end｜>", "content": None,
     "tool_calls": [tc("get_weather", WEATHER_ARGS), tc("search_flights", FLIGHT_ARGS)]},
    {"format": "deepseek_v3", "text": "Let me check.<｜tool▁calls▁begin｜>" + ds3_call("get_weather", W_UNI) + "<｜tool▁calls▁end｜>",
     "content": "Let me check.", "tool_calls": [tc("get_weather", W_UNI)]},
    {"format": "deepseek_v3", "text": "It is 21 °C and sunny in Paris.", "content": "It is 21 °C and sunny in Paris.", "tool_calls": []},
    # DeepSeek-V3.1 (non-thinking mode: the prompt ends with <｜Assistant｜></think>).
    {"format": "deepseek_v3_1", "text": "<｜tool▁calls▁begin｜>" + ds31_call("get_weather", WEATHER_ARGS) + "<｜tool▁calls▁end｜>",
     "content": None, "tool_calls": [tc("get_weather", WEATHER_ARGS)]},
    {"format": "deepseek_v3_1", "text": "<｜tool▁calls▁begin｜>" + ds31_call("get_weather", WEATHER_ARGS)
     + ds31_call("search_flights", FLIGHT_ARGS) + "<｜tool▁calls▁end｜>", "content": None,
     "tool_calls": [tc("get_weather", WEATHER_ARGS), tc("search_flights", FLIGHT_ARGS)]},
    {"format": "deepseek_v3_1", "text": "Let me check.<｜tool▁calls▁begin｜>" + ds31_call("get_weather", W_UNI) + "<｜tool▁calls▁end｜>",
     "content": "Let me check.", "tool_calls": [tc("get_weather", W_UNI)]},
    {"format": "deepseek_v3_1", "text": "It is 21 °C and sunny in Paris.", "content": "It is 21 °C and sunny in Paris.", "tool_calls": []},
    # Mistral before tokenizer v11 (Mistral-7B-Instruct-v0.3, Mixtral-8x22B-Instruct-v0.1, Nemo): a JSON array
    # after [TOOL_CALLS]; v0.3-style templates put a space after the marker, Nemo's does not. Stops at </s>.
    {"format": "mistral", "text": '[TOOL_CALLS] [{"name": "get_weather", "arguments": ' + W + "}]", "content": None,
     "tool_calls": [tc("get_weather", WEATHER_ARGS)]},
    {"format": "mistral", "text": '[TOOL_CALLS][{"name": "get_weather", "arguments": ' + W + '}, {"name": "search_flights", "arguments": ' + F + "}]",
     "content": None, "tool_calls": [tc("get_weather", WEATHER_ARGS), tc("search_flights", FLIGHT_ARGS)]},
    {"format": "mistral", "text": 'Let me check. [TOOL_CALLS] [{"name": "get_weather", "arguments": '
     + json.dumps(W_UNI, ensure_ascii=False) + "}]", "content": "Let me check.", "tool_calls": [tc("get_weather", W_UNI)]},
    {"format": "mistral", "text": "It is 21 °C and sunny in Paris.", "content": "It is 21 °C and sunny in Paris.", "tool_calls": []},
    # Mistral tokenizer v11+ (Mistral-Small-3.x, Devstral, Magistral, Ministral-3): name then [ARGS] per call.
    {"format": "mistral_v11", "text": "[TOOL_CALLS]get_weather[ARGS]" + W, "content": None,
     "tool_calls": [tc("get_weather", WEATHER_ARGS)]},
    {"format": "mistral_v11", "text": "[TOOL_CALLS]get_weather[ARGS]" + W + "[TOOL_CALLS]search_flights[ARGS]" + F, "content": None,
     "tool_calls": [tc("get_weather", WEATHER_ARGS), tc("search_flights", FLIGHT_ARGS)]},
    {"format": "mistral_v11", "text": "Let me check.[TOOL_CALLS]get_weather[ARGS]" + json.dumps(W_UNI, ensure_ascii=False),
     "content": "Let me check.", "tool_calls": [tc("get_weather", W_UNI)]},
    {"format": "mistral_v11", "text": "It is 21 °C and sunny in Paris.", "content": "It is 21 °C and sunny in Paris.", "tool_calls": []},
]


# Reference parsers (after vLLM's): content = the text before the first call marker, whitespace-trimmed, null
# when empty; reasoning (Qwen3 <think>) is split off first.
def split_think(text):
    m = re.match(r"\s*<think>(.*?)</think>", text, re.DOTALL)
    if not m:
        return None, text
    return m.group(1).strip("\n"), text[m.end():]


def finish(content, calls):
    content = content.strip()
    return (content or None), calls


def parse(fmt, text):
    if fmt == "qwen":
        start = text.find("<tool_call>")
        if start < 0:
            return finish(text, [])
        calls = [json.loads(m) for m in re.findall(r"<tool_call>(.*?)</tool_call>", text, re.DOTALL)]
        return finish(text[:start], [tc(c["name"], c["arguments"]) for c in calls])
    if fmt == "kimi_k2":
        start = text.find("<|tool_calls_section_begin|>")
        if start < 0:
            return finish(text, [])
        rx = r"<\|tool_call_begin\|>\s*([^<]+:\d+)\s*<\|tool_call_argument_begin\|>\s*(.*?)\s*<\|tool_call_end\|>"
        calls = [tc(i.split(":")[0].split(".")[-1], json.loads(a), i) for i, a in re.findall(rx, text, re.DOTALL)]
        return finish(text[:start], calls)
    if fmt in ("deepseek_v3", "deepseek_v3_1"):
        start = text.find("<｜tool▁calls▁begin｜>")
        if start < 0:
            return finish(text, [])
        if fmt == "deepseek_v3":
            rx = r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)\n```json\n(.*?)\n```<｜tool▁call▁end｜>"
            calls = [tc(n, json.loads(a)) for _t, n, a in re.findall(rx, text, re.DOTALL)]
        else:
            rx = r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)<｜tool▁call▁end｜>"
            calls = [tc(n, json.loads(a)) for n, a in re.findall(rx, text, re.DOTALL)]
        return finish(text[:start], calls)
    if fmt == "mistral":
        start = text.find("[TOOL_CALLS]")
        if start < 0:
            return finish(text, [])
        arr = json.loads(text[start + len("[TOOL_CALLS]"):])
        return finish(text[:start], [tc(c["name"], c["arguments"]) for c in arr])
    if fmt == "mistral_v11":
        parts = text.split("[TOOL_CALLS]")
        calls = []
        for part in parts[1:]:
            name, args = part.split("[ARGS]", 1)
            calls.append(tc(name, json.loads(args)))
        return finish(parts[0], calls)
    raise ValueError(fmt)


def check_outputs():
    for o in OUTPUTS:
        reasoning, text = (split_think(o["text"]) if o["format"] == "qwen" else (None, o["text"]))
        content, calls = parse(o["format"], text)
        assert content == o["content"], (o, content)
        assert calls == o["tool_calls"], (o, calls)
        assert reasoning == o.get("reasoning_content"), (o, reasoning)


def check_with_minijinja(refs):
    """Optional cross-check: render every reference with minijinja-py (the Python binding of the Rust engine;
    pick the version in Cargo.lock, e.g. `pip install --target /tmp/mj minijinja==2.24.0` and put /tmp/mj on
    PYTHONPATH) set up like src/chat.rs: trim_blocks, lstrip_blocks, pycompat, Python-style tojson,
    raise_exception. Python dicts keep insertion order, as the Rust side must (see SOURCES.md)."""
    try:
        import minijinja
    except ImportError:
        print("minijinja-py not installed: cross-check skipped")
        return

    def tojson(value, indent=None):
        return minijinja.safe(json.dumps(value, ensure_ascii=False, indent=indent))

    def raise_exception(message):
        raise RuntimeError(message)

    mismatches = 0
    for r in refs:
        env = minijinja.Environment(trim_blocks=True, lstrip_blocks=True)
        env.pycompat = True
        env.add_filter("tojson", tojson)
        env.add_function("raise_exception", raise_exception)
        with open(os.path.join(DIR, r["template"] + ".jinja")) as f:
            source = f.read()
        messages = r["messages"]
        if r["null_keys"] == "dropped":
            messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        ctx = dict(messages=messages, tools=r["tools"], add_generation_prompt=True, **r["kwargs"])
        for key in ("bos_token", "eos_token"):
            if r[key] is not None:
                ctx[key] = r[key]
        try:
            out = env.render_str(source, **ctx)
        except Exception:
            out = None
        if out != r.get("rendered"):
            mismatches += 1
            print("minijinja differs:", r["template"], r["case"], r["null_keys"])
    from importlib.metadata import version

    print(f"minijinja-py {version('minijinja')}: {len(refs) - mismatches}/{len(refs)} identical")


def main():
    refs, summary = render_references()
    with open(os.path.join(DIR, "references.json"), "w") as f:
        json.dump(refs, f, indent=1, ensure_ascii=False)
        f.write("\n")
    check_outputs()
    with open(os.path.join(DIR, "outputs.json"), "w") as f:
        json.dump(OUTPUTS, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{len(refs)} references, {len(OUTPUTS)} outputs written")
    check_with_minijinja(refs)
    for name, cases in summary.items():
        print(f"{name:14}", " ".join(f"{c}={o}" for c, o in cases.items()))


if __name__ == "__main__":
    main()
