#!/usr/bin/env python3
"""Bounded-time soak test of moeserve: well-behaved clients next to abusive traffic (standard library only).

    python3 scripts/soak.py [--bin target/release/moeserve] [--server-arg=--kv-blocks --server-arg=512]...
        [--duration 60] [--baseline-secs 10] [--settle-secs 15] [--workers 4] [--rss-slack-mib 64]
        [--p99-factor 2.0] [--allow-429] [--json FILE]      (--help lists the counts of each abusive kind)

1. Starts `BIN serve --host 127.0.0.1 --port 0 --served-model-name soak EXTRA...` (stderr to /dev/null) and
   reads the base URL from its first stdout line, `moeserve listening on http://ADDR`.
2. Baseline: for --baseline-secs, W well-behaved clients loop over chat completions (16 tokens, ignore_eos),
   non-streaming and streaming (SSE until `data: [DONE]`) alternately: end-to-end latency p50/p99, the
   server's VmRSS, and the /metrics gauges moeserve_kv_blocks_free / moeserve_kv_blocks_total.
3. Soak: for --duration, the same clients together with abusive traffic, each kind in its own tasks:
   streams hung up (RST) after 1-5 events; slow request heads (a byte a second, never finished, reopened when
   the server drops them); slow bodies (Content-Length 1000, 100 bytes sent, then a stall); idle keep-alive
   connections after one GET /health; malformed requests (invalid JSON, wrong types, huge n, no messages,
   unknown model, text/plain, a 64 KiB header, and every --huge-every seconds 250k messages in ~7 MB), each
   of which must get a 4xx with a JSON `error` object (a closed connection also passes for the 64 KiB header);
   n=8 requests, which must return 8 choices (429 counted apart). RSS is sampled every second.
4. Stops the abuse, waits up to --settle-secs for free KV blocks == total, runs the baseline again.
5. Prints a table (and writes --json FILE): latencies, counts per traffic kind ("dropped": connections the
   server ended), median time to a drop, KV blocks, RSS, the server's exit time after SIGTERM (SIGKILL after
   10 s). Exits 1, naming them, when checks fail: KV blocks back to total; RSS after settle <= baseline +
   --rss-slack-mib; soak p99 <= --p99-factor x baseline p99; no 5xx; no non-JSON 4xx; no 200 for abusive
   requests that should fail or wrong-shaped 200s; every well-behaved request 200 (429 too with --allow-429).
Only counts and timings are printed, never request or response content.
"""
import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import sys
import time
from collections import Counter, defaultdict

MSGS = [{"role": "user", "content": "hello there"}]
NET_ERRORS = (OSError, EOFError, asyncio.LimitOverrunError, ValueError, UnicodeError)  # incl. timeouts
STATS = defaultdict(Counter)  # traffic kind -> sent, ok, 4xx, 429, 5xx, conn_err, bad, nonjson_4xx, ...
DROPS = defaultdict(list)  # kind -> seconds until the server ended the connection
COLUMNS = ["sent", "ok", "4xx", "429", "5xx", "conn_err", "bad", "nonjson_4xx", "closed", "dropped"]
CHAT = "/v1/chat/completions"
KV_LINE = re.compile(r"^(moeserve_kv_blocks_(?:free|total)|moeserve_prefix_cache_blocks)(?:\{.*\})?[ \t]+([-+0-9.eE]+|NaN)", re.M)


class Ctx:
    def __init__(self, args, host, port, pid):
        self.args, self.host, self.port, self.pid, self.model = args, host, port, pid, "soak"

    def request(self, method, path, body=b"", ctype="application/json", extra="", close=True, length=None):
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}"
        if method == "POST":
            head += f"Content-Type: {ctype}\r\nContent-Length: {len(body) if length is None else length}\r\n"
        return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode("latin-1") + body

    def post(self, obj, **kw):
        return self.request("POST", CHAT, json.dumps(obj).encode(), **kw)

    def good_body(self, **kw):
        return dict({"model": self.model, "messages": MSGS, "max_tokens": 16, "ignore_eos": True}, **kw)


# ---------------------------------------------------------------- HTTP/1.1 over asyncio streams

async def read_head(reader):
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:] if ":" in ln))
    return int(lines[0].split()[1]), headers


async def body_chunks(reader, headers):
    """Yields the body: chunked transfer encoding, Content-Length, or everything until EOF."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while size := int((await reader.readline()).split(b";")[0].strip(), 16):
            yield await reader.readexactly(size)
            await reader.readexactly(2)
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # trailers
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        yield await reader.read()


async def read_body(reader, headers):
    return b"".join([c async for c in body_chunks(reader, headers)])


async def exchange(ctx, raw, timeout=None):
    """One request on its own connection: (status, body)."""
    async def go():
        reader, writer = await asyncio.open_connection(ctx.host, ctx.port)
        try:
            writer.write(raw)
            try:
                await writer.drain()
            except OSError:
                pass  # the server may answer (413, 431) before taking the whole request
            status, headers = await read_head(reader)
            return status, await read_body(reader, headers)
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout or ctx.args.request_timeout)


async def sse(ctx, body, max_events=None):
    """A streaming chat request: (status, error body, events, saw [DONE]); hangs up after max_events."""
    reader, writer = await asyncio.open_connection(ctx.host, ctx.port)
    try:
        writer.write(ctx.post(body))
        status, headers = await read_head(reader)
        if status != 200:
            return status, await read_body(reader, headers), 0, False
        buf, events = b"", 0
        async for chunk in body_chunks(reader, headers):
            buf += chunk.replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if event.strip() == b"data: [DONE]":
                    return status, b"", events, True
                events += bool(event.strip())
                if max_events and events >= max_events:
                    writer.transport.abort()  # abrupt close (RST) mid-generation
                    return status, b"", events, False
        return status, b"", events, False
    finally:
        writer.close()


async def connect(ctx, st):
    """A new connection, or None (counted, after a pause) when the server refuses it."""
    try:
        return await asyncio.open_connection(ctx.host, ctx.port)
    except OSError:
        st["conn_err"] += 1
        await asyncio.sleep(1)


def parse_json(raw):
    try:
        return json.loads(raw)
    except (ValueError, UnicodeError):
        return None


def n_choices(raw):
    doc = parse_json(raw)
    return len(doc.get("choices") or []) if isinstance(doc, dict) else -1


def tally(st, status, raw, ok):
    """Counts one reply; every 4xx must carry a JSON error object."""
    if ok or status >= 500 or status < 400:
        st["ok" if ok else "5xx" if status >= 500 else "bad"] += 1
        return
    st["429" if status == 429 else "4xx"] += 1
    doc = parse_json(raw)
    if not (isinstance(doc, dict) and isinstance(doc.get("error"), dict)):
        st["nonjson_4xx"] += 1


async def forever(one, pause):
    while True:
        await one()
        await asyncio.sleep(pause)


# ---------------------------------------------------------------- traffic kinds

async def good_client(ctx, i, stop, st, lats):
    """Well-behaved: non-streaming and streaming chat requests alternately, latency of each success."""
    while not stop.is_set():
        stream, i = i % 2 == 1, i + 1
        st["sent"] += 1
        t0 = time.perf_counter()
        try:
            if stream:
                status, raw, _, done = await asyncio.wait_for(sse(ctx, ctx.good_body(stream=True)),
                                                              ctx.args.request_timeout)
                ok = status == 200 and done
            else:
                status, raw = await exchange(ctx, ctx.post(ctx.good_body()))
                ok = status == 200 and n_choices(raw) == 1
        except NET_ERRORS:
            st["conn_err"] += 1
            await asyncio.sleep(0.2)  # no hot loop when the server is gone
            continue
        if ok:
            lats.append(time.perf_counter() - t0)
        tally(st, status, raw, ok)


async def disconnect_once(ctx):
    """A stream hung up (RST) after 1-5 events."""
    st, want = STATS["disconnect"], random.randint(1, 5)
    st["sent"] += 1
    try:
        status, raw, events, done = await asyncio.wait_for(
            sse(ctx, ctx.good_body(stream=True, max_tokens=64), want), ctx.args.request_timeout)
        tally(st, status, raw, status == 200 and (events >= want or done))
    except NET_ERRORS:
        st["conn_err"] += 1


async def hold(ctx, kind, talk):
    """Keeps one connection of `kind` open: talk(ctx, st, reader, writer) returns (optionally the time its wait
    began) when the server ends the connection; then a new one is opened."""
    st = STATS[kind]
    while True:
        if not (conn := await connect(ctx, st)):
            continue
        st["sent"] += 1
        t0 = time.monotonic()
        try:
            t0 = await talk(ctx, st, *conn) or t0
        except NET_ERRORS:
            pass
        finally:
            conn[1].close()
        st["dropped"] += 1
        DROPS[kind].append(time.monotonic() - t0)
        await asyncio.sleep(0.1)


async def slow_head(ctx, st, reader, writer):
    """A request head sent one byte a second, never finished."""
    head, i = f"POST {CHAT} HTTP/1.1\r\nHost: soak\r\nX-Slow: ".encode(), 0
    while True:
        writer.write(head[i:i + 1] or b"a")
        i += 1
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(4096), 1.0)
        except asyncio.TimeoutError:
            continue
        if data[:5] == b"HTTP/" and data[9:12].isdigit():  # answered (e.g. 408) before closing
            st["5xx" if data[9:10] == b"5" else "4xx" if data[9:10] == b"4" else "bad"] += 1
        return


async def slow_body(ctx, st, reader, writer):
    """Full headers announcing 1000 body bytes, then 100 of them and a stall."""
    writer.write(ctx.request("POST", CHAT, (b'{"model": "soak", "messages": [' + b" " * 100)[:100], length=1000))
    status, headers = await read_head(reader)  # comes when the server gives up on the body
    tally(st, status, await asyncio.wait_for(read_body(reader, headers), 10), False)


async def idle(ctx, st, reader, writer):
    """One GET /health on a keep-alive connection, then silence until the server closes it."""
    writer.write(ctx.request("GET", "/health", close=False))
    status, headers = await read_head(reader)
    tally(st, status, await read_body(reader, headers), status == 200)
    t0 = time.monotonic()
    await reader.read()  # EOF: the server closed the idle connection
    return t0


def malformed_cases(ctx):
    ok = {"model": ctx.model, "messages": MSGS}
    return {
        "invalid_json": ctx.request("POST", CHAT, b'{"model": "soak", "messages": ['),
        "wrong_types": ctx.post({"model": 7, "messages": "hi", "max_tokens": "many"}),
        "huge_n": ctx.post(dict(ok, n=10**9)),
        "empty_messages": ctx.post(dict(ok, messages=[])),
        "unknown_model": ctx.post(dict(ok, model="no-such-model")),
        "text_plain": ctx.post(ok, ctype="text/plain"),
        "big_header": ctx.request("POST", CHAT, b"{", extra=f"X-Big: {'a' * 65536}\r\n"),
    }


async def malformed_once(ctx, name, raw):
    """Malformed input: a 4xx with a JSON error object (2xx counts as `bad`)."""
    st = STATS["malformed:" + name]
    st["sent"] += 1
    try:
        status, body = await exchange(ctx, raw)
        tally(st, status, body, False)
    except NET_ERRORS:
        st["closed" if name == "big_header" else "conn_err"] += 1


async def n_once(ctx):
    """n=8 non-streaming: 8 choices, or a 429 when the queue is full."""
    st = STATS["n8"]
    st["sent"] += 1
    try:
        status, raw = await exchange(ctx, ctx.post({"model": ctx.model, "messages": MSGS, "n": 8, "max_tokens": 4}))
        tally(st, status, raw, status == 200 and n_choices(raw) == 8)
    except NET_ERRORS:
        st["conn_err"] += 1


# ---------------------------------------------------------------- measurements and phases

def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return None


async def kv_blocks(ctx):
    """(free, total) from /metrics, each summed over its label sets; None where unreadable."""
    try:
        _, raw = await exchange(ctx, ctx.request("GET", "/metrics"), timeout=10)
    except NET_ERRORS:
        return None, None
    vals = {}
    for m in KV_LINE.finditer(raw.decode("utf-8", "replace")):  # name[{labels}] value [timestamp]
        vals[m[1]] = vals.get(m[1], 0.0) + float(m[2])
    free = vals.get("moeserve_kv_blocks_free")
    # Blocks the prefix cache keeps are evictable: free for any request that needs them.
    if free is not None:
        free += vals.get("moeserve_prefix_cache_blocks", 0)
    return free, vals.get("moeserve_kv_blocks_total")


def pct(values, q):
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, min(len(s), -(-len(s) * q // 100)) - 1)] if s else None


async def phase(ctx, name, secs, abuse):
    """Well-behaved clients for `secs` (with every abusive kind when `abuse`): latencies and RSS."""
    a, stop, lats, rss = ctx.args, asyncio.Event(), [], [rss_mib(ctx.pid)]
    good = [asyncio.create_task(good_client(ctx, i, stop, STATS["good:" + name], lats)) for i in range(a.workers)]
    kinds = []
    if abuse:
        cases = malformed_cases(ctx)
        many = {"model": ctx.model, "messages": [{"role": "user", "content": "a"}] * 250_000}
        huge = ctx.request("POST", CHAT, json.dumps(many, separators=(",", ":")).encode())  # 7.5 MB
        kinds = ([forever(lambda: disconnect_once(ctx), a.abuse_pause) for _ in range(a.disconnect_clients)]
                 + [hold(ctx, "slow_head", slow_head) for _ in range(a.slow_clients)]
                 + [hold(ctx, "slow_body", slow_body) for _ in range(a.slow_body_clients)]
                 + [hold(ctx, "idle", idle) for _ in range(a.idle_conns)]
                 + [forever(lambda: malformed_once(ctx, *random.choice(list(cases.items()))), a.abuse_pause)
                    for _ in range(a.malformed_clients)]
                 + [forever(lambda: malformed_once(ctx, "many_messages", huge), a.huge_every)]
                 + [forever(lambda: n_once(ctx), a.abuse_pause) for _ in range(a.n_clients)])
    tasks = [asyncio.create_task(k) for k in kinds]
    end = time.monotonic() + secs
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        rss.append(rss_mib(ctx.pid))
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.wait(good, timeout=a.request_timeout)  # let well-behaved requests finish
    for t in good:
        t.cancel()
    await asyncio.gather(*tasks, *good, return_exceptions=True)
    rss = [r for r in rss if r is not None]
    return {"requests": len(lats), "p50_s": pct(lats, 50), "p99_s": pct(lats, 99),
            "rss_mib": rss_mib(ctx.pid), "rss_peak_mib": max(rss, default=None)}


async def start_server(args):
    cmd = [args.bin, "serve", "--host", "127.0.0.1", "--port", "0", "--served-model-name", "soak", *args.server_arg]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    prefix = "moeserve listening on http://"
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), args.startup_timeout)).decode().strip()
    except asyncio.TimeoutError:
        line = ""
    if not line.startswith(prefix):
        await stop_server(proc)
        raise RuntimeError(f"the server did not print its address (exit code {proc.returncode})")
    asyncio.get_running_loop().create_task(proc.stdout.read())  # keep draining stdout
    host, port = line[len(prefix):].rsplit(":", 1)
    return proc, host.strip("[]"), int(port)


async def stop_server(proc):
    """SIGTERM, SIGKILL after 10 s; seconds until it exited after SIGTERM (None: killed or already gone)."""
    if proc.returncode is not None:
        return None
    t0 = time.monotonic()
    try:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
        return time.monotonic() - t0
    except ProcessLookupError:
        return None
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None


async def run(args):
    proc, host, port = await start_server(args)
    ctx, rep = Ctx(args, host, port, proc.pid), {}
    try:
        _, raw = await exchange(ctx, ctx.request("GET", "/v1/models"), timeout=30)
        doc = parse_json(raw)
        ids = [m.get("id") for m in doc.get("data") or []] if isinstance(doc, dict) else []
        ctx.model = "soak" if "soak" in ids or not ids else ids[0]
        await exchange(ctx, ctx.post(ctx.good_body()))  # warm-up
        rep["baseline"] = await phase(ctx, "baseline", args.baseline_secs, False)
        rep["baseline"]["kv_free"], rep["baseline"]["kv_total"] = await kv_blocks(ctx)
        rep["soak"] = await phase(ctx, "soak", args.duration, True)
        rep["server_alive_after_soak"] = proc.returncode is None
        t0 = time.monotonic()
        while True:
            free, total = await kv_blocks(ctx)
            if (free is not None and free == total) or time.monotonic() - t0 >= args.settle_secs:
                break
            await asyncio.sleep(0.5)
        rep["settle"] = {"kv_free": free, "kv_total": total, "secs": time.monotonic() - t0}
        rep["after"] = await phase(ctx, "after", args.baseline_secs, False)
        rep["after"]["kv_free"], rep["after"]["kv_total"] = await kv_blocks(ctx)
    finally:
        rep["server_exit_s"] = await stop_server(proc)
    return rep


# ---------------------------------------------------------------- report

def checks(args, rep):
    b, s, a, se = rep["baseline"], rep["soak"], rep["after"], rep["settle"]
    tot = sum(STATS.values(), Counter())
    bad = sum(st["bad"] for k, st in STATS.items() if not k.startswith("good:"))
    out = [("server alive after soak", rep["server_alive_after_soak"], ""),
           ("KV blocks back to total", se["kv_free"] is not None and se["kv_free"] == se["kv_total"],
            f"free {fmt(se['kv_free'], digits=0)} / total {fmt(se['kv_total'], digits=0)}"),
           ("RSS after settle <= baseline + slack",
            None not in (b["rss_mib"], a["rss_mib"]) and a["rss_mib"] <= b["rss_mib"] + args.rss_slack_mib,
            f"{fmt(a['rss_mib'])} MiB vs {fmt(b['rss_mib'])} + {args.rss_slack_mib:g} MiB"),
           ("soak p99 <= factor x baseline p99", rep["p99_ratio"] is not None and rep["p99_ratio"] <= args.p99_factor,
            f"ratio {fmt(rep['p99_ratio'], 1, 'x', 2)} (max {args.p99_factor:g}x)"),
           ("no 5xx", tot["5xx"] == 0, f"{tot['5xx']} replies"),
           ("no non-JSON 4xx", tot["nonjson_4xx"] == 0, f"{tot['nonjson_4xx']} replies"),
           ("no abusive request answered 2xx, no wrong-shaped 200", bad == 0, f"{bad} replies")]
    for k, st in STATS.items():
        if k.startswith("good:"):
            ok = st["ok"] + (st["429"] if args.allow_429 else 0) == st["sent"]
            out.append((f"well-behaved all 200 ({k[5:]})", ok, f"{st['ok']}/{st['sent']} ok, {st['429']} 429"))
    return [{"name": n, "ok": bool(o), "detail": d} for n, o, d in out]


def fmt(v, scale=1.0, unit="", digits=1):
    return "-" if v is None else f"{v * scale:.{digits}f}{unit}"


def report(args, rep):
    b, s, a, se = rep["baseline"], rep["soak"], rep["after"], rep["settle"]
    rep["p99_ratio"] = s["p99_s"] / b["p99_s"] if s["p99_s"] and b["p99_s"] else None
    rep["traffic"] = {k: dict(v) for k, v in sorted(STATS.items())}
    rep["drops"] = {k: {"count": len(v), "median_s": statistics.median(v) if v else None} for k, v in DROPS.items()}
    rep["checks"] = checks(args, rep)
    rep["ok"] = all(c["ok"] for c in rep["checks"])
    print(f"{'phase':10}{'requests':>10}{'p50 ms':>10}{'p99 ms':>10}{'RSS MiB':>10}{'peak MiB':>10}")
    for name, p in (("baseline", b), ("soak", s), ("after", a)):
        print(f"{name:10}{p['requests']:>10}{fmt(p['p50_s'], 1e3):>10}{fmt(p['p99_s'], 1e3):>10}"
              f"{fmt(p['rss_mib']):>10}{fmt(p['rss_peak_mib']):>10}")
    print(f"soak p99 / baseline p99: {fmt(rep['p99_ratio'], 1, 'x', 2)}\n")
    print(f"{'kind':26}" + "".join(f"{c:>12}" for c in COLUMNS))
    for k, v in rep["traffic"].items():
        print(f"{k:26}" + "".join(f"{v.get(c, 0):>12}" for c in COLUMNS))
    for k, d in rep["drops"].items():
        print(f"{k}: ended by the server {d['count']} times, median after {fmt(d['median_s'], 1, ' s')}")
    print(f"KV blocks free/total: after settle {fmt(se['kv_free'], digits=0)}/{fmt(se['kv_total'], digits=0)} "
          f"(waited {se['secs']:.1f} s), at end {fmt(a['kv_free'], digits=0)}/{fmt(a['kv_total'], digits=0)}")
    print(f"server exit after SIGTERM: {fmt(rep['server_exit_s'], 1, ' s', 2)} (-: killed, or gone before)\n")
    for c in rep["checks"]:
        print(f"[{'ok' if c['ok'] else 'FAIL'}] {c['name']}" + (f": {c['detail']}" if c["detail"] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/moeserve", help="the moeserve binary")
    ap.add_argument("--server-arg", action="append", default=[], help="passed to `serve` verbatim (repeatable)")
    for flag, default, what in [
            ("duration", 60.0, "seconds of soak"), ("baseline-secs", 10.0, "seconds of each baseline"),
            ("settle-secs", 15.0, "max wait for free KV blocks == total"), ("workers", 4, "well-behaved clients"),
            ("disconnect-clients", 2, "streams hung up after 1-5 events"), ("slow-clients", 20, "slow heads"),
            ("slow-body-clients", 5, "stalled bodies"), ("idle-conns", 20, "idle keep-alive connections"),
            ("malformed-clients", 2, "malformed-request loops"), ("n-clients", 1, "n=8 request loops"),
            ("huge-every", 5.0, "seconds between 250k-message bodies"),
            ("abuse-pause", 0.05, "seconds between abusive requests"), ("request-timeout", 120.0, "seconds"),
            ("startup-timeout", 120.0, "seconds"), ("rss-slack-mib", 64.0, "allowed RSS growth"),
            ("p99-factor", 2.0, "allowed soak p99 / baseline p99")]:
        ap.add_argument("--" + flag, type=type(default), default=default, help=f"{what} (default {default})")
    ap.add_argument("--allow-429", action="store_true", help="429 is fine for well-behaved requests")
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"soak: {args.bin} not found (build it or pass --bin)")
    try:
        rep = asyncio.run(run(args))
    except RuntimeError as e:
        sys.exit(f"soak: aborted: {e}")
    except NET_ERRORS as e:  # the type only: a message could quote content
        sys.exit(f"soak: aborted: {type(e).__name__}")
    report(args, rep)
    if not rep["ok"]:
        print("FAILED: " + ", ".join(c["name"] for c in rep["checks"] if not c["ok"]))
        sys.exit(1)


if __name__ == "__main__":
    main()
