#!/usr/bin/env python3
"""Web UI benchmark (issue 21), in headless Debian Chromium against a release gateway.

Measures, for deployments of 10k, 100k and 1M lines written through the HTTP API:
  - time from navigation to the log's last line on screen (the page opens at the end),
  - elements in the DOM once it is there,
and, in the same run, the peer: a viewer that renders one element per line (what
concourse/concourse#470 and kubetail-org/kubetail#2 describe), fed by the same
gateway's export. Then, while a live deployment is followed at 1,000 lines/s: main-
thread long tasks (> 50 ms, PerformanceObserver) and the latency from a batch's ingest
acknowledgement to its lines on screen.

    python3 e2e/bench/ui.py [--gateway target/release/logstream-gateway] [--runs 3]

Prints markdown tables (pasted into docs/benchmarks.md).
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

from playwright.sync_api import sync_playwright

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # e2e/
from gateway_proc import start_for_bench  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def push(gw, dep, messages, step="build"):
    """`messages` as lines of `step`, in one ingest request; its reply."""
    return gw.push(gw.bearer, dep, [{"step": step, "message": m} for m in messages])


def real_lines():
    """Lines of real build output (../shared/data/ci), cycled."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "ci")
    lines = []
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            with open(os.path.join(dirpath, f), errors="replace") as fh:
                lines.extend(line.rstrip("\n") for line in fh if line.strip())
    return lines or [f"compiling crate {i} ... \x1b[32mok\x1b[0m" for i in range(1000)]


def fill(gw, dep, n, source):
    batch = 50_000
    for start in range(0, n, batch):
        push(gw, dep, [source[i % len(source)] for i in range(start, min(n, start + batch))])
    gw.complete(gw.bearer, dep, "succeeded")


def open_log(browser, gw, dep, last):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.add_init_script(f"sessionStorage.setItem('logstream.token', {json.dumps(gw.bearer)})")
    page = ctx.new_page()
    t0 = time.perf_counter()
    page.goto(f"{gw.url}/deployments/{dep}")
    page.locator(f'#log .row[data-seq="{last}"]').wait_for(state="visible", timeout=60_000)
    ms = (time.perf_counter() - t0) * 1000
    dom = page.evaluate("document.getElementsByTagName('*').length")
    rows = page.locator("#log .row").count()
    ctx.close()
    return ms, dom, rows


NAIVE = """async ([dep, token]) => {
  const t0 = performance.now();
  const resp = await fetch(`/v1/deployments/${dep}/export?format=text`, {headers: {Authorization: 'Bearer ' + token}});
  if (!resp.ok) throw new Error('export answered ' + resp.status);
  const text = await resp.text();
  document.body.replaceChildren();
  const box = document.createElement('div');
  for (const line of text.split('\\n')) {
    const d = document.createElement('div');
    d.textContent = line;
    box.append(d);
  }
  document.body.append(box);
  box.lastElementChild.scrollIntoView();
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return [performance.now() - t0, document.getElementsByTagName('*').length];
}"""


def open_naive(browser, gw, dep):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    page.goto(f"{gw.url}/openapi.json")  # same origin, nothing of the UI loaded
    t0 = time.perf_counter()
    try:
        page.set_default_timeout(120_000)
        _, dom = page.evaluate(NAIVE, [dep, gw.bearer])
        ms = (time.perf_counter() - t0) * 1000
    except Exception as e:  # the browser gave up (out of memory, timeout)
        ms, dom = None, str(e).splitlines()[0][:60]
    ctx.close()
    return ms, dom


def follow(browser, gw, rate=1000, seconds=20):
    dep = "follow-live"
    push(gw, dep, ["start"])
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.add_init_script(f"sessionStorage.setItem('logstream.token', {json.dumps(gw.bearer)})")
    ctx.add_init_script("""
      window.__long = [];
      new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long.push(e.duration); })
        .observe({type: 'longtask', buffered: true});
      window.__frames = [];
      const tick = () => {
        const rows = document.querySelectorAll('#log .row');
        const last = rows.length ? Number(rows[rows.length - 1].dataset.seq) : 0;
        window.__frames.push([performance.timeOrigin + performance.now(), last]);
        requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    """)
    page = ctx.new_page()
    page.goto(f"{gw.url}/deployments/{dep}")
    page.locator('#log .row[data-seq="1"]').wait_for(state="visible", timeout=30_000)
    page.evaluate("window.__long = []; window.__frames = []")
    acks = []
    per_batch = rate // 10
    t_start = time.time()
    i = 0
    while time.time() - t_start < seconds:
        target = t_start + i * 0.1
        if target > time.time():
            time.sleep(target - time.time())
        r = push(gw, dep, [f"live line {i}.{j} \x1b[36mstep\x1b[0m output" for j in range(per_batch)])
        acks.append((r["last_seq"], time.time() * 1000))
        i += 1
    page.wait_for_timeout(1000)
    longs = page.evaluate("window.__long")
    frames = page.evaluate("window.__frames")
    ctx.close()
    lat = []
    for seq, at in acks:
        shown = next((t for t, last in frames if last >= seq), None)
        if shown is not None:
            lat.append(max(0.0, shown - at))
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
    return {
        "lines": acks[-1][0] if acks else 0, "seconds": seconds, "long_tasks": len(longs),
        "long_ms": sum(longs), "longest": max(longs) if longs else 0.0,
        "p50": pct(0.5), "p99": pct(0.99), "max": lat[-1] if lat else float("nan"), "batches": len(acks),
        "shown": len(lat),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", default=os.path.expanduser("~/.cache/logstream/target/release/logstream-gateway"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--naive-max", type=int, default=1_000_000, help="largest log the one-element-per-line peer is given")
    args = ap.parse_args()
    gw = start_for_bench(args.gateway, "ls-ui-bench-", "logs:read,logs:write,logs:export")
    try:
        source = real_lines()
        sizes = [int(s) for s in args.sizes.split(",")]
        for n in sizes:
            fill(gw, f"log-{n}", n, source)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            print(f"Machine: {os.cpu_count()} cores; Chromium headless; gateway {args.gateway}\n")
            print("| lines | logstream UI: first lines (median of %d, min-max) | DOM elements | `.row`s | one element per line: same | DOM elements | ratio |" % args.runs)
            print("|---:|---:|---:|---:|---:|---:|---:|")
            for n in sizes:
                ours = [open_log(browser, gw, f"log-{n}", n) for _ in range(args.runs)]
                ms = [o[0] for o in ours]
                if n <= args.naive_max:
                    naive = [open_naive(browser, gw, f"log-{n}") for _ in range(args.runs)]
                    nms = [x[0] for x in naive if x[0] is not None]
                    ndom = naive[-1][1]
                else:
                    nms, ndom = [], "not run"
                if nms:
                    peer = f"{statistics.median(nms):,.0f} ms ({min(nms):,.0f}-{max(nms):,.0f})"
                    ratio = f"{statistics.median(nms) / statistics.median(ms):.1f}x"
                else:
                    peer, ratio = "did not finish", "-"
                print(f"| {n:,} | {statistics.median(ms):,.0f} ms ({min(ms):,.0f}-{max(ms):,.0f}) | {ours[-1][1]:,} | {ours[-1][2]} | {peer} | {ndom if isinstance(ndom, str) else f'{ndom:,}'} | {ratio} |")
            f = follow(browser, gw)
            print()
            print("| following live | lines | long tasks (> 50 ms) | their total | longest | ack -> on screen p50 | p99 | max |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            print(f"| 1,000 lines/s for {f['seconds']} s | {f['lines']:,} | {f['long_tasks']} | {f['long_ms']:.0f} ms | {f['longest']:.0f} ms | {f['p50']:.0f} ms | {f['p99']:.0f} ms | {f['max']:.0f} ms |")
            browser.close()
    finally:
        gw.stop(kill=True)


if __name__ == "__main__":
    main()
