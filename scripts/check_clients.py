#!/usr/bin/env python3
"""Run the official Python clients against a local moeserve and check that they accept its answers.

    python3 scripts/check_clients.py            # MOESERVE_BIN=path/to/moeserve to pick the binary

The script re-execs itself in ~/.cache/moeserve/clients-venv (made once, --system-site-packages on top of
/opt/refenv/bin/python if it exists, with openai, openai-agents, pydantic-ai-slim[openai], lm-eval[api]),
starts `moeserve serve --port 0` with the embedded tiny random-weight model (gibberish text: only structure
is checked; constrained decoding makes JSON outputs and forced tool calls valid) and kills it at the end.
Checks (PASS/FAIL line each; under a FAIL the exception and the last HTTP exchanges, verbatim):
  openai         chat.completions.parse (strict pydantic json_schema); forced tool call, plain and streamed;
                 responses.create plain, stream=True and responses.stream()
  pydantic-ai    structured output: default mode (forced tool call), ToolOutput, NativeOutput; a plain tool
  openai-agents  forced function tool + stop_on_first_tool, over the Responses API and Chat Completions
  lm-eval        local-completions loglikelihood, 4-doc multiple-choice task, tokenizer_backend=remote
Exit code 0 only if every check passes. Telemetry and tracing are disabled; nothing leaves the machine.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path.home() / ".cache/moeserve/clients-venv"
REFENV = Path("/opt/refenv/bin/python")
PACKAGES = ["openai", "openai-agents", "pydantic-ai-slim[openai]", "lm-eval[api]"]
IMPORTS = "import openai, agents, pydantic_ai, lm_eval, tenacity, aiohttp"
MODEL = "test-model"
OFFLINE = {"OPENAI_AGENTS_DISABLE_TRACING": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1", "LOGFIRE_IGNORE_NO_CONFIG": "1"}
os.environ.update(OFFLINE)


def bootstrap():
    """Create/reuse the venv, install the clients, re-exec this script inside it."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    vpy = VENV / "bin/python"
    base = str(REFENV) if REFENV.exists() else sys.executable
    if not vpy.exists():
        print(f"creating {VENV} on top of {base}", flush=True)
        subprocess.run([base, "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    # /opt/refenv is itself a venv: --system-site-packages only reaches its base interpreter, so link
    # refenv's own site-packages (torch, transformers) in with a .pth file, after the venv's own.
    if base == str(REFENV):
        site = [subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                               text=True, check=True).stdout.strip() for py in (base, str(vpy))]
        Path(site[1], "zz_refenv.pth").write_text(site[0] + "\n")
    if subprocess.run([str(vpy), "-c", IMPORTS], capture_output=True).returncode != 0:
        print(f"installing {' '.join(PACKAGES)}", flush=True)
        subprocess.run([str(vpy), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    os.execv(str(vpy), [str(vpy), str(Path(__file__).resolve()), *sys.argv[1:]])


bootstrap()

try:  # newer openai releases ship on the httpx2 fork; older ones on httpx
    import httpx2 as httpx
except ImportError:
    import httpx
from importlib.metadata import version
from typing import Annotated, Literal

from pydantic import BaseModel, Field

# ---- HTTP capture: every exchange the SDKs make, so a FAIL can show the exact request and response ----
TRAFFIC = []


def _on_request(r):
    TRAFFIC.append({"request": f"{r.method} {r.url}", "body": r.content.decode(errors="replace")})


def _on_response(r):
    r.read()  # buffers a stream too; the SDK then iterates the buffered body
    TRAFFIC[-1]["response"] = f"{r.status_code} {r.text}"


async def _aon_request(r):
    _on_request(r)


async def _aon_response(r):
    await r.aread()
    TRAFFIC[-1]["response"] = f"{r.status_code} {r.text}"


def client(aio=False):
    """An openai client (AsyncOpenAI with aio) whose HTTP exchanges land in TRAFFIC; no retries."""
    import openai
    hooks = {"request": [_aon_request], "response": [_aon_response]} if aio else \
        {"request": [_on_request], "response": [_on_response]}
    http = (httpx.AsyncClient if aio else httpx.Client)(event_hooks=hooks, timeout=120)
    return (openai.AsyncOpenAI if aio else openai.OpenAI)(base_url=BASE, api_key="x", http_client=http, max_retries=0)


# ---- schemas: small and bounded, the random model writes character-level tokens ----
class Trip(BaseModel):
    city: Annotated[str, Field(max_length=4)]
    days: Annotated[int, Field(ge=1, le=9)]


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris", "Rome"]},
                                  "unit": {"type": "string", "enum": ["c", "f"]}}}}}
ASK = [{"role": "user", "content": "Plan a trip: which city and how many days?"}]
WEATHER = [{"role": "user", "content": "What is the weather in Oslo?"}]
CHECKS = []


def check(name):
    def deco(fn):
        CHECKS.append((name, fn))
        return fn
    return deco


# ---- 1. openai ----
@check("openai chat.completions.parse (pydantic response_format, strict)")
def openai_parse():
    c = client()
    parse = getattr(c.chat.completions, "parse", None) or c.beta.chat.completions.parse
    r = parse(model=MODEL, messages=ASK, response_format=Trip, max_tokens=200, temperature=0)
    m = r.choices[0].message
    assert isinstance(m.parsed, Trip), f"parsed={m.parsed!r} content={m.content!r}"
    return f"parsed={m.parsed!r} finish={r.choices[0].finish_reason}"


@check("openai chat tool_choice=required")
def openai_tools():
    r = client().chat.completions.create(model=MODEL, messages=WEATHER, tools=[WEATHER_TOOL],
                                         tool_choice="required", max_tokens=200, temperature=0)
    ch = r.choices[0]
    assert ch.message.tool_calls, f"no tool_calls: {ch.message!r}"
    fn = ch.message.tool_calls[0].function
    assert fn.name == "get_weather", fn.name
    args = json.loads(fn.arguments)
    return f"{fn.name}({args}) finish={ch.finish_reason} id={ch.message.tool_calls[0].id}"


@check("openai chat tool_choice=required, stream=True")
def openai_tools_stream():
    calls, finish = {}, None
    for chunk in client().chat.completions.create(model=MODEL, messages=WEATHER, tools=[WEATHER_TOOL],
                                                  tool_choice="required", max_tokens=200,
                                                  temperature=0, stream=True):
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                acc = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                acc["id"] = tc.id or acc["id"]
                f = tc.function
                acc["name"] += (f and f.name) or ""
                acc["arguments"] += (f and f.arguments) or ""
    assert calls and calls[0]["name"] == "get_weather" and calls[0]["id"], f"delta.tool_calls: {calls}"
    args = json.loads(calls[0]["arguments"])
    return f"get_weather({args}) finish={finish} calls={len(calls)}"


@check("openai responses.create")
def openai_responses():
    r = client().responses.create(model=MODEL, input="hi", max_output_tokens=16)
    assert isinstance(r.output_text, str), type(r.output_text)
    return f"status={r.status} output_text={r.output_text!r}"


@check("openai responses.create(stream=True)")
def openai_responses_stream():
    types = [ev.type for ev in client().responses.create(model=MODEL, input="hi", max_output_tokens=16,
                                                         stream=True)]
    assert {"response.completed", "response.incomplete"} & set(types), types
    return f"{len(types)} events: {types[0]} .. {types[-1]}"


@check("openai responses.stream()")
def openai_responses_stream_helper():
    with client().responses.stream(model=MODEL, input="hi", max_output_tokens=16) as s:
        types = [ev.type for ev in s]
        final = s.get_final_response() if "response.completed" in types else None
    assert {"response.completed", "response.incomplete"} & set(types), types
    return f"{len(types)} events, last {types[-1]}" + (f", final status={final.status}" if final else "")


# ---- 2. pydantic-ai ----
def pai_model():
    import pydantic_ai.models.openai as pm
    from pydantic_ai.providers.openai import OpenAIProvider
    model_cls = getattr(pm, "OpenAIChatModel", None) or pm.OpenAIModel  # OpenAIModel before pydantic-ai 1.0
    return model_cls(MODEL, provider=OpenAIProvider(openai_client=client(aio=True)))


PAI_SETTINGS = {"max_tokens": 200, "temperature": 0}


def pai_structured(mode):
    """Agent(output_type=Trip) in pydantic-ai's default mode (a forced tool call), ToolOutput or NativeOutput."""
    import pydantic_ai
    n0 = len(TRAFFIC)
    output_type = getattr(pydantic_ai, mode)(Trip) if mode else Trip
    r = pydantic_ai.Agent(pai_model(), output_type=output_type).run_sync("Plan a trip.", model_settings=PAI_SETTINGS)
    assert isinstance(r.output, Trip), r.output
    body = json.loads(TRAFFIC[n0]["body"])
    sent = {k: body[k] if k == "tool_choice" else body[k]["type"] for k in ("tool_choice", "response_format") if k in body}
    return f"output={r.output!r} sent={sent} requests={len(TRAFFIC) - n0}"


for _mode in (None, "ToolOutput", "NativeOutput"):
    check(f"pydantic-ai output_type={_mode + '(Trip)' if _mode else 'Trip (default output mode)'}")(
        lambda m=_mode: pai_structured(m))


@check("pydantic-ai agent with @tool_plain, text output")
def pai_plain_tool():
    from pydantic_ai import Agent
    agent = Agent(pai_model(), instructions="Use get_weather when asked about weather.")
    called = []

    @agent.tool_plain
    def get_weather(city: Literal["Oslo", "Paris"]) -> str:
        """Weather for a city."""
        called.append(city)
        return f"Sunny in {city}"

    r = agent.run_sync("What is the weather in Oslo?", model_settings=PAI_SETTINGS)
    assert isinstance(r.output, str), r.output
    return f"tool called={called} output={r.output[:40]!r}"


# ---- 3. openai-agents ----
def run_agents(api):
    from agents import (Agent, ModelSettings, Runner, function_tool, set_default_openai_api,
                        set_default_openai_client, set_tracing_disabled)
    set_tracing_disabled(True)
    set_default_openai_client(client(aio=True), use_for_tracing=False)
    set_default_openai_api(api)
    n0 = len(TRAFFIC)

    @function_tool
    def get_weather(city: Literal["Oslo", "Paris", "Rome"]) -> str:
        """Weather for a city."""
        return f"WEATHER({city})=sunny"

    agent = Agent(name="weather", instructions="Answer weather questions with the tool.", model=MODEL,
                  tools=[get_weather], tool_use_behavior="stop_on_first_tool",
                  model_settings=ModelSettings(tool_choice="required", max_tokens=200, temperature=0))
    r = Runner.run_sync(agent, "weather in Oslo?")
    assert isinstance(r.final_output, str) and r.final_output.startswith("WEATHER("), r.final_output
    paths = sorted({x["request"].split("/v1", 1)[1] for x in TRAFFIC[n0:]})
    return f"final_output={r.final_output!r} endpoints={paths}"


for _api in ("responses", "chat_completions"):
    check(f"openai-agents forced tool, set_default_openai_api({_api!r})")(lambda a=_api: run_agents(a))


# ---- 4. lm-eval ----
TASK_YAML = """task: moeserve_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""
DOCS = [("What color is the sky?", ["blue", "green", "red"], 0), ("2 + 2 =", ["3", "4", "5"], 1),
        ("Capital of Norway?", ["Paris", "Rome", "Oslo"], 2), ("Opposite of hot?", ["cold", "warm", "big"], 0)]


@check("lm-eval local-completions loglikelihood (4-doc multiple_choice)")
def lm_eval_mc():
    with tempfile.TemporaryDirectory() as d:
        data = Path(d, "data.jsonl")
        data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in DOCS))
        Path(d, "moeserve_tiny_mc.yaml").write_text(TASK_YAML.format(data=data))
        args = (f"model={MODEL},base_url={BASE}/completions,num_concurrent=1,max_retries=1,"
                "tokenized_requests=True,tokenizer_backend=remote")
        cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
               "--tasks", "moeserve_tiny_mc", "--include_path", d, "--limit", "4"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=d)
    out = p.stdout + p.stderr
    rows = [ln for ln in out.splitlines() if "|acc" in ln.replace(" ", "")]
    if p.returncode != 0 or not rows:
        raise AssertionError(f"lm_eval rc={p.returncode}, no acc row; output tail:\n" + "\n".join(out.splitlines()[-40:]))
    return rows[0].strip()


# ---- runner ----
def start_server():
    binary = os.environ.get("MOESERVE_BIN") or next(
        (str(p) for p in (ROOT / "target/release/moeserve", ROOT / "target/debug/moeserve") if p.exists()), None)
    if not binary:
        sys.exit("no moeserve binary: build it or set MOESERVE_BIN")
    cmd = [binary, "serve", "--port", "0", "--served-model-name", MODEL, "--chat-template",
           str(ROOT / "tests/fixtures/chat/tools/qwen2_5.jinja"), "--json-whitespace", "compact"]
    log = tempfile.NamedTemporaryFile("w+", prefix="moeserve-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("moeserve listening on "):
        proc.kill()
        sys.exit(f"server did not start: {line!r}; log {log.name}")
    return proc, binary, line.rsplit(" ", 1)[1], log.name


def show_traffic(since):
    for x in TRAFFIC[since:][-2:]:
        print(f"    >>> {x['request']}\n    >>> {x['body'][:1500]}")
        print(f"    <<< {x.get('response', '(no response)')[:2500]}")


def main():
    global BASE
    proc, binary, url, log = start_server()
    BASE = url + "/v1"
    print(f"server: {binary} at {url} (log {log})")
    print("clients: " + ", ".join(f"{p}=={version(p)}" for p in ("openai", "openai-agents", "pydantic-ai-slim",
                                                                  "lm_eval", httpx.__name__)))
    failed = 0
    try:
        for name, fn in CHECKS:
            since, t0 = len(TRAFFIC), time.time()
            try:
                detail = fn()
                print(f"PASS {name} ({time.time() - t0:.1f}s): {detail}", flush=True)
            except Exception as e:  # report everything, keep going
                failed += 1
                print(f"FAIL {name} ({time.time() - t0:.1f}s): {type(e).__name__}: {e}", flush=True)
                if not isinstance(e, AssertionError):
                    print("    " + "".join(traceback.format_exception(e)[-3:]).strip().replace("\n", "\n    "))
                show_traffic(since)
    finally:
        proc.kill()
        proc.wait()
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
