#!/usr/bin/env python3
"""MCP benchmark (issue 22): what the MCP door costs over the REST API it calls.

Against a release gateway, with real log data (../shared/data/loghub, 16 systems), the
Python MCP SDK (streamable HTTP) as the assistant's client and, in the same run, the peer:
the same questions asked of the REST API directly (urllib, one connection per request
like the SDK's httpx pool is not: so the REST figures are a floor, not a rival).

  1. latency of "the latest 100 lines" (get_logs vs GET .../logs?direction=backward&limit=100)
  2. reading a 100,000-line deployment to the end in pages of 1,000 (get_logs with
     newer_cursor vs history with next_cursor): lines per second
  3. search_logs for a word across the 16 deployments vs list + a history `q` per
     deployment
  4. a subscribed deployment: time from a line's ingest acknowledgement to
     notifications/resources/updated (the throttle, notify_interval = 1 s, dominates)
  5. answer size per line: get_logs JSON (structuredContent + its text copy) vs the
     logs resource's text

    python3 e2e/bench/mcp_server.py [--gateway target/release/logstream-gateway] [--runs 3]

Prints markdown tables (pasted into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.parse
from contextlib import AsyncExitStack

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # e2e/
from gateway_proc import start_for_bench  # noqa: E402

LOGHUB = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "loghub")


def push(gw, dep, messages):
    """`messages` as lines of step "run", in one ingest request; its reply."""
    return gw.push(gw.bearer, dep, [{"step": "run", "message": m} for m in messages])


def history(gw, dep, **q):
    """A page of GET .../logs (REST, urllib)."""
    return gw.get_json(f"/v1/deployments/{dep}/logs?" + urllib.parse.urlencode(q), gw.bearer)


def loghub():
    out = {}
    for f in sorted(os.listdir(LOGHUB)):
        if f.endswith("_2k.log"):
            with open(os.path.join(LOGHUB, f), errors="replace") as fh:
                out[f[:-len("_2k.log")].lower()] = [l.rstrip("\n") for l in fh if l.strip()]
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def session(gw, stack, inbox=None):
    client = create_mcp_http_client(headers={"Authorization": "Bearer " + gw.bearer},
                                    timeout=httpx.Timeout(30, read=120))
    read, write, _ = await stack.enter_async_context(streamable_http_client(gw.url + "/mcp", http_client=client))
    kwargs = {"message_handler": inbox} if inbox else {}
    s = await stack.enter_async_context(ClientSession(read, write, **kwargs))
    await s.initialize()
    return s


async def call(s, tool, **args):
    r = await s.call_tool(tool, args)
    assert not r.isError, r
    return r


async def latest_100(gw, s, dep, n):
    mcp, rest = [], []
    for _ in range(n):
        t = time.perf_counter()
        await call(s, "get_logs", deployment=dep, lines=100)
        mcp.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        history(gw, dep, direction="backward", limit=100)
        rest.append((time.perf_counter() - t) * 1000)
    return mcp, rest


async def read_all(gw, s, dep, total):
    t = time.perf_counter()
    seen, cursor = 0, None
    while True:
        args = {"deployment": dep, "lines": 1000, "direction": "forward"}
        if cursor:
            args["cursor"] = cursor
        r = (await call(s, "get_logs", **args)).structuredContent
        seen += len(r["lines"])
        cursor = r.get("newer_cursor")
        if r["at_end"]:
            break
    mcp = time.perf_counter() - t
    assert seen == total, (seen, total)
    t = time.perf_counter()
    seen, cursor = 0, None
    while True:
        q = {"limit": 1000}
        if cursor:
            q["cursor"] = cursor
        p = history(gw, dep, **q)
        seen += len(p["lines"])
        cursor = p["next_cursor"]
        if p["complete"]:
            break
    rest = time.perf_counter() - t
    assert seen == total, (seen, total)
    return total / mcp, total / rest


async def search(gw, s, word):
    t = time.perf_counter()
    r = (await call(s, "search_logs", query=word, limit=200)).structuredContent
    mcp = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    found = 0
    for d in gw.get_json("/v1/deployments?limit=50", gw.bearer)["deployments"]:
        found += len(history(gw, d["id"], q="(?i)" + word, direction="backward", limit=200 - found + 1)["lines"])
        if found > 200:
            break
    rest = (time.perf_counter() - t) * 1000
    return mcp, rest, len(r["matches"])


async def notify_latency(gw, n):
    dep = "live-sub"
    push(gw, dep, ["start"])
    got = asyncio.Queue()

    async def inbox(msg):
        root = getattr(msg, "root", None)
        if root is not None and getattr(root, "method", "") == "notifications/resources/updated":
            await got.put(time.perf_counter())

    out = []
    async with AsyncExitStack() as stack:
        s = await session(gw, stack, inbox)
        await s.subscribe_resource(f"logstream://deployments/{dep}/logs")
        for i in range(n):
            await asyncio.sleep(0.3 + (i % 7) * 0.1)  # spread pushes over the throttle window
            while not got.empty():
                got.get_nowait()
            t = time.perf_counter()
            await asyncio.to_thread(push, gw, dep, [f"line {i}"])
            out.append((await asyncio.wait_for(got.get(), 10) - t) * 1000)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", default=os.path.expanduser("~/.cache/logstream/target/release/logstream-gateway"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    gw = start_for_bench(args.gateway, "ls-mcp-bench-", "logs:read,logs:write")
    try:
        asyncio.run(amain(gw, args.runs))
    finally:
        gw.stop(kill=True)


async def amain(gw, runs):
    data = loghub()
    for name, lines in data.items():
        push(gw, name, lines)
        gw.complete(gw.bearer, name, "succeeded")
    big = "big"
    source = [l for ls in data.values() for l in ls]
    for start in range(0, 100_000, 25_000):
        push(gw, big, [source[i % len(source)] for i in range(start, start + 25_000)])
    gw.complete(gw.bearer, big, "succeeded")
    async with AsyncExitStack() as stack:
        s = await session(gw, stack)
        lat_m, lat_r, rate_m, rate_r, srch_m, srch_r = [], [], [], [], [], []
        matches = 0
        for _ in range(runs):
            m, r = await latest_100(gw, s, "hadoop", 200)
            lat_m.append(m)
            lat_r.append(r)
            a, b = await read_all(gw, s, big, 100_000)
            rate_m.append(a)
            rate_r.append(b)
            a, b, matches = await search(gw, s, "error")
            srch_m.append(a)
            srch_r.append(b)

        def med(runs, f):
            vals = [f(x) for x in runs]
            return statistics.median(vals), min(vals), max(vals)

        print(f"Machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
              f"medians of {runs} runs (min-max)")
        print()
        print("| question | MCP (Python SDK, streamable HTTP) | REST directly (urllib) | MCP / REST |")
        print("|---|---:|---:|---:|")
        for label, p in (("p50", 50), ("p99", 99)):
            m = med(lat_m, lambda x: pct(x, p))
            r = med(lat_r, lambda x: pct(x, p))
            print(f"| latest 100 lines, {label} (200 calls) | {m[0]:.1f} ms ({m[1]:.1f}-{m[2]:.1f}) | "
                  f"{r[0]:.1f} ms ({r[1]:.1f}-{r[2]:.1f}) | {m[0] / r[0]:.1f}x |")
        m, r = statistics.median(rate_m), statistics.median(rate_r)
        print(f"| read 100,000 lines in pages of 1,000 | {m:,.0f} lines/s ({min(rate_m):,.0f}-{max(rate_m):,.0f}) | "
              f"{r:,.0f} lines/s ({min(rate_r):,.0f}-{max(rate_r):,.0f}) | {r / m:.1f}x slower |")
        m, r = statistics.median(srch_m), statistics.median(srch_r)
        print(f"| search \"error\" across 17 deployments ({matches} matches, limit 200) | {m:.0f} ms "
              f"({min(srch_m):.0f}-{max(srch_m):.0f}) | {r:.0f} ms ({min(srch_r):.0f}-{max(srch_r):.0f}) | {m / r:.1f}x |")

        r = await call(s, "get_logs", deployment="hadoop", lines=100)
        structured = len(json.dumps(r.structuredContent))
        text_copy = sum(len(c.text) for c in r.content if getattr(c, "text", None))
        res = await s.read_resource("logstream://deployments/hadoop/logs")
        text = sum(len(c.text) for c in res.contents)
    notes = await notify_latency(gw, 20)
    print()
    print(f"Subscription: ingest acknowledged -> notifications/resources/updated, 20 lines pushed at "
          f"random moments: p50 {pct(notes, 50):.0f} ms, p99 {pct(notes, 99):.0f} ms, max {max(notes):.0f} ms "
          f"(notify_interval = 1 s)")
    raw = sum(len(l) + 1 for l in data["hadoop"][-100:])
    print()
    print("| the latest 100 lines of Hadoop (loghub) | bytes | per line | vs the raw lines |")
    print("|---|---:|---:|---:|")
    print(f"| raw lines | {raw:,} | {raw / 100:.0f} | 1.0x |")
    print(f"| get_logs structuredContent | {structured:,} | {structured / 100:.0f} | {structured / raw:.1f}x |")
    print(f"| get_logs text content (the same JSON, for clients without structured output) | {text_copy:,} | "
          f"{text_copy / 100:.0f} | {text_copy / raw:.1f}x |")
    print(f"| logs resource (text/plain) | {text:,} | {text / 100:.0f} | {text / raw:.1f}x |")


if __name__ == "__main__":
    main()
