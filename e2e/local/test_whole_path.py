"""The whole path under chaos: a pipeline's pods write CRI files on a simulated node, the
node collector ships them (through a TCP proxy) to a store, two edges fan them out, and
six viewers follow at once: SSE (through a proxy), WebSocket, `kubectl logstream logs -f`
over SSE (through a proxy) and over WebSocket, the web UI in headless Chromium and an MCP
subscription. An external CI agent adds a step with `kubectl logstream run`. Meanwhile a
seeded schedule kills -9 and restarts the collector, the store and an edge (several
rounds), cuts, stalls and slows the proxied connections, fills the collector's spool
(the store away, a 1 MiB spool) and steps the wall clock of the collector and an edge.

Checks, once the pipeline has ended:
- every viewer saw every line exactly once and in order (seq 1..N), the same lines;
- each pod's lines arrived in the order written, none missing, none twice;
- secrets masked at every door: live (each viewer), history, export, MCP, the UI's page,
  the audit log; and no secret byte in the store's data directory;
- history and the NDJSON export are byte-identical to what the live viewers were sent;
- every viewer ended with the pipeline's status (the CLI exits 1 for failed, naming the code).

A table of what was injected and what held is printed (and written to
$LOGSTREAM_LOCAL_REPORT when set). Sizes: LOGSTREAM_LOCAL_BIG_MB (the big step's
megabytes, default 8; 1024 for the issue's 1 GB step), LOGSTREAM_CHAOS_SEED.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import system  # noqa: E402
from system import SECRETS, ClockStep, Collector, Edge, KubeletSim, Proxy, Store, secret_of  # noqa: E402
from viewers import CliViewer, McpWatcher, SseViewer, WsViewer, canonical, open_session  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway_proc import debug_binary, unique  # noqa: E402

BIG_MB = int(os.environ.get("LOGSTREAM_LOCAL_BIG_MB", "8"))
BUILD_LINES = 3000
AGENT_LINES = 2000
DEPLOY_LINES = 500
DEPLOY_EXIT = 3
END_WAIT = 300  # seconds for everything to arrive once the pipeline has ended
# Rounds of the chaos schedule (each injection once per round, in a seeded random order);
# the last stage writes on until they are done.
ROUNDS = int(os.environ.get("LOGSTREAM_CHAOS_ROUNDS", "2"))


def masked(msg: str) -> bool:
    return not any(s in msg for s in SECRETS)


class Pipeline:
    """What the pipeline writes, per step, in order: the numbers of its lines (each line
    reads `<step> line <k>...`; after the collector's redaction the secret part differs,
    the prefix not)."""

    def __init__(self):
        self.written: dict[str, list[int]] = {}

    def lines(self, step: str, first: int, n: int, width: int = 0) -> list[tuple[str, str]]:
        out = []
        for k in range(first, first + n):
            stream = "stderr" if k % 5 == 4 else "stdout"
            secret = f" token={secret_of(k)}" if k % 13 == 0 else ""
            pad = " " + "x" * width if width else ""
            out.append((stream, f"{step} line {k}{secret}{pad}"))
        self.written.setdefault(step, []).extend(range(first, first + n))
        return out


def number(step: str, msg: str) -> int:
    m = re.match(rf"{re.escape(step)} line (\d+)", msg)
    assert m, f"a line of {step} that the pipeline never wrote: {msg[:200]!r}"
    return int(m.group(1))


class Chaos:
    """The injections, on a seeded schedule, while the pipeline runs; each row says what
    was done and what was seen right after (the viewers' lines still a gap-free,
    duplicate-free prefix)."""

    def __init__(self, rig: "Rig"):
        self.rig = rig
        self.rows: list[dict] = []
        self.stop = threading.Event()
        self.rand = system.rng()
        self.thread = threading.Thread(target=self._run, daemon=True, name="chaos")
        self.failure: BaseException | None = None
        self.rounds = 0
        # One injection at a time: the pipeline's own (the spool filled) waits its turn.
        self.lock = threading.Lock()

    def start(self) -> None:
        self.thread.start()

    def record(self, what: str, target: str, seen: str) -> None:
        broken = [v for v in self.rig.viewers if not v.in_order]
        held = "yes" if not broken else "NO: " + ", ".join(f"{v.name} {v.disorder}" for v in broken)
        self.rows.append({"t": time.monotonic() - self.rig.t0, "what": what, "target": target,
                          "seen": seen, "held": held,
                          "lines": min((v.count for v in self.rig.viewers), default=0)})

    def _run(self) -> None:
        r = self.rig
        actions = [
            ("kill -9, restart", "collector", self.kill_collector),
            ("kill -9, restart", "store", self.kill_store),
            ("kill -9, restart", "edge-1", self.kill_edge),
            ("cut every connection", "proxy collector->store", lambda: f"{r.ingest_proxy.cut()} connections reset"),
            ("cut every connection", "proxy viewers->edges", lambda: f"{r.sse_proxy.cut() + r.cli_proxy.cut()} connections reset"),
            ("stall 2 s", "proxies (collector, viewers)", self.stall),
            ("slow to 32 KiB/s for 2 s", "proxies (collector, viewers)", self.slow),
            ("step the wall clock -1h, back after 1 s", "collector", lambda: self.step(r.collector_clock)),
            ("step the wall clock +10 min, back after 1 s", "edge-2", lambda: self.step(r.edge_clock, "+10m")),
        ]
        try:
            while not self.stop.is_set():
                order = actions[:]
                self.rand.shuffle(order)
                for what, target, act in order:
                    if self.stop.wait(self.rand.uniform(0.3, 1.0)):
                        return
                    with self.lock:
                        seen = act()
                        self.record(what, target, seen)
                self.rounds += 1
        except BaseException as e:  # reported by the test
            self.failure = e

    def kill_collector(self) -> str:
        self.rig.collector.kill()
        time.sleep(self.rand.uniform(0, 1))
        self.rig.collector.start()
        return f"started again on its state dir (start #{self.rig.collector.starts})"

    def kill_store(self) -> str:
        self.rig.store.restart()
        return "started again on the same data dir and ports"

    def kill_edge(self) -> str:
        self.rig.edge1.restart()
        return "started again on the same ports"

    def stall(self) -> str:
        for p in self.rig.proxies():
            p.stall(2)
        time.sleep(2)
        return "every byte held 2 s"

    def slow(self) -> str:
        for p in self.rig.proxies():
            p.slow(32 << 10, 2)
        time.sleep(2)
        return "bytes trickled at 32 KiB/s"

    def step(self, clock: ClockStep, offset: str = "-1h") -> str:
        before = clock.now()
        clock.set(offset)
        stepped = clock.now()
        time.sleep(1)
        clock.set("+0")
        return f"clock read {stepped:%H:%M} instead of {before:%H:%M}, then back"

    def spool_full(self, feed) -> None:
        """The store away while the big step writes (`feed()` writes one more chunk):
        the 1 MiB spool fills and the collector stops reading (backpressure) until the
        store is back."""
        with self.lock:
            self.record("the store away while the big step writes (1 MiB spool)", "collector spool",
                        self._spool_full(feed))

    def _spool_full(self, feed) -> str:
        r = self.rig
        before = r.collector.metric("spool_full_total")
        r.store.stop(kill=True)
        deadline = time.monotonic() + 60
        def full() -> bool:
            # Held back with the spool within one batch (512 KiB) of its 1 MiB limit.
            return r.collector.metric("backpressure_containers") >= 1 \
                and r.collector.metric("spool_bytes") > 512 << 10

        while not full():
            if time.monotonic() > deadline:
                m = [x for x in (r.collector.metrics() or "").splitlines()
                     if re.search(r"spool|stalled|lag|containers|files_|backpressure|batches|lines_", x)
                     and not x.startswith("#")]
                raise AssertionError("the spool never filled in 60 s with the store away; collector: "
                                     + "\n".join(m))
            feed()
            time.sleep(0.05)
        fills = r.collector.metric("spool_full_total") - before
        spooled = r.collector.metric("spool_bytes")
        r.store.log_path = r.store.log_path.with_name(f"store.{time.monotonic_ns()}.log")
        r.store.start()
        return f"spool full ({int(spooled)} bytes spooled, {int(fills)} new fills counted), reading held back, then drained"


class Rig:
    """Every process of the path. `backend` "local": the store keeps everything on its
    disk; "kafka+s3": it runs in Kafka mode (a tansu broker) and offloads sealed 1 MiB
    segments to S3 (moto) at once, keeping no local copy (so reads come from S3)."""

    def __init__(self, work: Path, backend: str):
        self.work = work
        self.t0 = time.monotonic()
        self.servers = []
        tenant = unique("acme")
        extra = ""
        if backend == "kafka+s3":
            broker = system.kafka_broker(work)
            self.s3 = system.s3_server(work, "logs")
            self.servers += [broker, self.s3]
            creds = work / "s3.env"
            creds.write_text("AWS_ACCESS_KEY_ID=logstream-e2e\nAWS_SECRET_ACCESS_KEY=logstream-e2e-secret\n")
            extra = (
                "segment_bytes = 1048576\n"
                f'[kafka]\nbrokers = "127.0.0.1:{broker.port}"\ntenants = ["{tenant}"]\npartitions = 2\n'
                'replication_factor = 1\nadvertise_url = "{url}"\n'
                'properties = { "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }\n'
                f'[object_store]\nurl = "s3://logs/e2e"\nendpoint = "http://127.0.0.1:{self.s3.port}"\n'
                f'region = "us-east-1"\ncredentials_file = "{creds}"\nlocal_cache_bytes = 1\n'
                'upload_interval = "1s"\n'
            )
        self.backend = backend
        self.store = Store(work, extra)
        self.store.start()
        self.token = self.store.token(tenant, "logs:read,logs:write,logs:export,admin", ttl="24h")
        self.edge_clock = ClockStep(work / "edge-2.clock")
        self.collector_clock = ClockStep(work / "collector.clock")
        self.edge1 = Edge(self.store, work, "edge-1")
        self.edge2 = Edge(self.store, work, "edge-2", clock=self.edge_clock)
        self.edge1.start()
        self.edge2.start()
        self.ingest_proxy = Proxy(self.store.grpc_port, "ingest")
        self.sse_proxy = Proxy(self.edge1.http_port, "sse")
        self.cli_proxy = Proxy(self.edge2.http_port, "cli")
        self.sim = KubeletSim(work / "pods", work / "pods.json")
        self.collector = Collector(work / "pods", work, work / "pods.json", self.token,
                                   self.ingest_proxy.port, "1Mi", clock=self.collector_clock)
        self.collector.start()
        self.viewers: list = []

    def proxies(self) -> list[Proxy]:
        return [self.ingest_proxy, self.sse_proxy, self.cli_proxy]

    def close(self) -> None:
        self.collector.kill()
        for p in self.proxies():
            p.close()
        for g in (self.edge1, self.edge2, self.store):
            g.stop(kill=True)
        for srv in self.servers:
            srv.stop()

    def history(self, deployment: str, **params):
        """Every line from the store's history API, page by page, as they come."""
        cursor = None
        while True:
            q = {"limit": "5000", **params, **({"cursor": cursor} if cursor else {})}
            page = self.store.get_json(
                f"/v1/deployments/{urllib.parse.quote(deployment)}/logs?{urllib.parse.urlencode(q)}", self.token)
            yield from page["lines"]
            cursor = page.get("next_cursor")
            if not page["lines"] or not cursor:
                return

    def line_at(self, deployment: str, seq: int) -> dict:
        page = self.store.get_json(f"/v1/deployments/{urllib.parse.quote(deployment)}/logs?at={seq}&limit=1",
                                   self.token)
        return page["lines"][0]

    def count(self, deployment: str, step: str) -> int:
        q = urllib.parse.urlencode({"step": step, "limit": "5000"})
        n, cursor = 0, None
        while True:
            path = f"/v1/deployments/{urllib.parse.quote(deployment)}/logs?{q}" + (f"&cursor={cursor}" if cursor else "")
            try:
                status, _, body = self.store.request("GET", path, self.token, timeout=10)
            except (OSError, http.client.HTTPException):  # the store killed by the chaos
                return -1
            if status != 200:
                return -1
            page = json.loads(body)
            n += len(page["lines"])
            cursor = page.get("next_cursor")
            if not page["lines"] or not cursor:
                return n


def wait_until(what: str, pred, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


@pytest.fixture(params=["local", "kafka+s3"])
def rig(request, tmp_path):
    if not os.access(system.LIBFAKETIME, os.R_OK):
        pytest.fail(f"{system.LIBFAKETIME} missing: the test command installs Debian's faketime")
    r = Rig(tmp_path, request.param)
    yield r
    r.close()


def test_every_line_once_in_order_at_every_door_through_chaos(rig, tmp_path):
    r = rig
    dep = unique("pipeline")
    cli = debug_binary("LOGSTREAM_CLI", "kubectl-logstream")
    edge1_direct = f"http://127.0.0.1:{r.edge1.http_port}"
    sse = SseViewer(r.sse_proxy.port, dep, r.token)
    sse.keep_values = True
    r.viewers = [
        sse.start(),
        WsViewer(r.edge2.http_port, dep, r.token).start(),
        CliViewer(cli, f"http://127.0.0.1:{r.cli_proxy.port}", dep, r.token, "sse").start(),
        CliViewer(cli, edge1_direct, dep, r.token, "ws").start(),
    ]
    mcp = McpWatcher(r.store.url + "/mcp", dep, r.token).start()

    from playwright.sync_api import expect, sync_playwright
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page()
    page.goto(f"{r.edge2.url}/deployments/{dep}#token={urllib.parse.quote(r.token, safe='')}")

    pipe = Pipeline()
    chaos = Chaos(r)
    chaos.start()
    sim = r.sim
    try:
        # Stage 1, build: a stage before the last; rename and copytruncate rotations.
        sim.add_pod("build", dep, "build", complete="on-failure")
        for k in range(0, BUILD_LINES, 100):
            sim.write("build", pipe.lines("build", k, 100))
            if k == 1000:
                sim.rotate_rename("build", 1)
            if k == 2000:
                # copytruncate loses what was not read when it empties the file: it
                # happens once the gateway has every line written so far.
                wait_until("build's lines before the copytruncate",
                           lambda: r.count(dep, "build") == len(pipe.written["build"]), 120)
                sim.rotate_copytruncate("build")
            time.sleep(0.02)
        sim.finish_pod("build", 0)

        # Stage 2, a big step beside an external agent's step (kubectl logstream run).
        agent = subprocess.Popen(
            [cli, "run", "--deployment", dep, "--step", "agent", "--no-complete",
             "--server", f"http://127.0.0.1:{r.edge2.http_port}", "--token", r.token, "--",
             "sh", "-c", f'i=0; while [ $i -lt {AGENT_LINES} ]; do echo "agent line $i"; '
                         f'if [ $((i % 13)) -eq 0 ]; then echo "agent line $i token={SECRETS[1]}" >&2; fi; '
                         f'i=$((i+1)); done'],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sim.add_pod("big", dep, "big", complete="on-failure")
        chunk_lines = 4000
        width = 200
        total = BIG_MB * (1 << 20) // (width + 40)
        big = 0

        def feed(n: int = 500) -> None:
            nonlocal big
            sim.write("big", pipe.lines("big", big, n, width))
            big += n

        spool_done = False
        while big < total:
            feed(min(chunk_lines, total - big))
            if big >= chunk_lines * 10 and "big" not in sim.rotated:
                sim.rotate_rename("big", 1)
            if not spool_done and big >= total // 3:
                spool_done = True
                chaos.spool_full(feed)
        sim.finish_pod("big", 0)
        _, agent_err = agent.communicate(timeout=END_WAIT)
        assert agent.returncode == 0, f"kubectl logstream run exited {agent.returncode}: {agent_err[-2000:]!r}"

        # Stage 3, deploy: the last stage, failing with DEPLOY_EXIT; it writes on until the
        # chaos schedule has run its rounds.
        sim.add_pod("deploy", dep, "deploy")
        k = 0
        while k < DEPLOY_LINES or chaos.rounds < ROUNDS:
            assert chaos.thread.is_alive(), f"the chaos schedule failed: {chaos.failure!r}"
            sim.write("deploy", pipe.lines("deploy", k, 50))
            k += 50
            if k % 5000 == 0:
                sim.rotate_rename("deploy", k // 5000)
            time.sleep(0.05)
        sim.finish_pod("deploy", DEPLOY_EXIT)
        time.sleep(1)
    finally:
        chaos.stop.set()
        chaos.thread.join(timeout=60)
    if chaos.failure:
        raise chaos.failure

    for v in r.viewers:
        assert v.done.wait(END_WAIT), f"{v.name} never saw the end (errors: {v.errors[-3:]})"
    mcp.stop.set()
    mcp.thread.join(timeout=30)

    # History, read once as a stream (a 1 GB step is millions of lines): seqs 1..N, each
    # step's lines in the order written, no secret; digests to compare with the viewers.
    expected = sum(len(m) for m in pipe.written.values()) + AGENT_LINES + AGENT_LINES // 13 + 1
    canon, values = hashlib.blake2b(), hashlib.blake2b()
    n, disorder, leaked = 0, None, None
    got: dict[str, list[int]] = {}
    agent_out = []
    for h in r.history(dep):
        n += 1
        if h["seq"] != n and disorder is None:
            disorder = (n, h["seq"])
        canon.update(canonical(h))
        values.update(json.dumps(h, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        if leaked is None and not masked(h["message"]):
            leaked = h["message"][:200]
        if h["step"] == "agent":
            if h["stream"] == "stdout":
                agent_out.append(h["message"])
        else:
            got.setdefault(h["step"], []).append(number(h["step"], h["message"]))
    report = [f"backend {r.backend}: {n:,} lines ({BIG_MB} MB big step), {len(chaos.rows)} injections"]
    assert disorder is None, f"history: seq {disorder[1]} at position {disorder[0]}"
    assert leaked is None, f"a secret in history: {leaked}"
    missing = {step: sorted(set(nums) - set(got.get(step, []))) for step, nums in pipe.written.items()}
    assert n == expected, f"history has {n} lines, the pipeline wrote {expected}; missing " + \
        str({k: (len(v), v[:5], v[-5:]) for k, v in missing.items() if v}) + f"; chaos {chaos_table(chaos.rows, [])}"
    for step, nums in pipe.written.items():
        assert got.get(step) == nums, f"{step}: lines missing, repeated or reordered"
    assert agent_out == [f"agent line {i}" for i in range(AGENT_LINES)]

    # Exactly once, in order, the same lines at every viewer.
    for v in r.viewers:
        assert v.in_order and v.count == n, f"{v.name}: {v.count} lines, first out of order {v.disorder}"
        assert v.digest.digest() == canon.digest(), f"{v.name}: other lines than history's"
        reconnects = v.stderr.count(b"reconnecting") if isinstance(v, CliViewer) else v.reconnects
        report.append(f"{v.name}: {v.count:,} lines, {reconnects} reconnects")
    # History equal, field by field, to what the SSE viewer was sent.
    assert sse.value_digest.digest() == values.digest(), "history differs from the SSE viewer's lines"

    # The export: byte-identical to the SSE viewer's data, no secret (streamed).
    exported, tail, size = hashlib.blake2b(), b"", 0
    req = urllib.request.Request(f"{r.store.url}/v1/deployments/{dep}/export?format=ndjson",
                                 headers={"Authorization": f"Bearer {r.token}"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        while chunk := resp.read(1 << 20):
            exported.update(chunk)
            size += len(chunk)
            window = tail + chunk
            assert masked(window.decode(errors="replace")), "a secret in the export"
            tail = window[-128:]
    assert exported.digest() == sse.raw_digest.digest(), "the export differs from the SSE viewer's data"
    report.append(f"export: {size:,} bytes, byte-identical to the SSE viewer's data")

    # Secrets: not in the audit log, nor in any byte kept uncompressed.
    audit = r.store.get_json(f"/v1/audit?deployment={dep}&limit=1000", r.token)
    assert audit["events"] and masked(json.dumps(audit))
    # (Segments are zstd-compressed blocks: their lines were checked through history and
    # export above; this finds what is kept uncompressed: audit, catalog, the spool.)
    for d in (Path(r.store.data_dir), r.work / "collector-state"):
        for f in d.rglob("*"):
            if f.is_file() and f.stat().st_size < 256 << 20:
                data = f.read_bytes()
                assert not any(s.encode() in data for s in SECRETS), f"a secret in {f}"
    if r.backend == "kafka+s3":
        objects = system.s3_objects(r.s3.port, "logs")
        segs = [k for k in objects if k.endswith(".seg") and f"/{dep}/" in k]
        assert segs, f"no segment of {dep} in object storage: {sorted(objects)[:20]}"
        for k, data in objects.items():
            assert not any(s.encode() in data for s in SECRETS), f"a secret in s3://logs/{k}"
        report.append(f"object storage: {len(segs)} segments of the deployment offloaded (local copies evicted)")

    # Every viewer ended with the pipeline's status.
    final = r.store.get_json(f"/v1/deployments/{dep}", r.token)
    assert (final["status"], final["exit_code"]) == ("failed", DEPLOY_EXIT), final
    for v in r.viewers[:2]:
        assert (v.end["status"], v.end["exit_code"]) == ("failed", DEPLOY_EXIT), (v.name, v.end)
    for v in r.viewers[2:]:
        # `logs -f` exits with the status: 0 succeeded, 1 failed (README), and names the code.
        assert v.exit_code == 1, f"{v.name} exited {v.exit_code}: {v.stderr[-500:]!r}"
        assert f"failed (exit code {DEPLOY_EXIT})".encode() in v.stderr, v.stderr[-500:]

    # The web UI (edge-2, through every store restart): the end banner, the last lines,
    # no secret on the page.
    end = page.locator("#end")
    expect(end).to_be_visible(timeout=60_000)
    expect(end).to_contain_text("failed")
    expect(end).to_contain_text(f"exit code {DEPLOY_EXIT}")
    expect(page.locator("main")).to_contain_text(f"{n:,} lines", timeout=30_000)
    rows = page.locator("#log .row[data-seq]")
    shown = rows.evaluate_all("rs => rs.map(r => [Number(r.dataset.seq), r.innerText])")
    assert shown, "the UI shows no line"
    for seq, text in shown:
        assert r.line_at(dep, seq)["message"] in text, (seq, text[:200])
    assert masked(page.content())
    report.append(f"web UI: {len(shown)} rows on screen match history, {n:,} lines counted")
    browser.close()
    pw.stop()

    # MCP: updates arrived through the restarts; paging get_logs returns history.
    # In Kafka mode a subscription can only be made while the store owns the partition
    # (else `not_owner`, and the client opens a session again): with the store killed
    # twice, the windows in which lines arrive may all fall between sessions.
    if r.backend == "local":
        assert mcp.updates > 0, f"no resources/updated notification ({mcp.errors[-3:]})"
    assert mcp.sessions > 0, f"no MCP session ({mcp.errors[-3:]})"
    report.append(f"MCP: {mcp.updates} updates over {mcp.sessions} sessions"
                  + (f" (the last refusal: {mcp.errors[-1][:160]})" if mcp.errors else ""))

    async def newest_page():
        async with open_session(r.store.url + "/mcp", r.token) as s:
            res = await s.call_tool("get_logs", {"deployment": dep, "lines": 1000})
            assert not res.isError, res.content
            return res.structuredContent

    import asyncio
    last = asyncio.run(newest_page())["lines"]
    assert masked(json.dumps(last))
    assert [x["seq"] for x in last] == list(range(n - len(last) + 1, n + 1))
    newest = list(itertools.islice(r.history(dep, direction="backward", limit=str(len(last))), len(last)))[::-1]
    assert [x["message"] for x in last] == [h["message"] for h in newest]

    table = chaos_table(chaos.rows, report)
    print(table)
    if os.environ.get("LOGSTREAM_LOCAL_REPORT"):
        with open(os.environ["LOGSTREAM_LOCAL_REPORT"], "a") as f:
            f.write(f"\n### Backend: {r.backend}\n\n" + table)
    assert all(row["held"] == "yes" for row in chaos.rows), table
    kinds = {row["target"] for row in chaos.rows}
    assert {"collector", "store", "edge-1", "collector spool"} <= kinds, table


def chaos_table(rows: list[dict], summary: list[str]) -> str:
    out = ["| t (s) | injected | into | what it did | lines every viewer had | viewers' lines still once, in order |",
           "|---:|---|---|---|---:|---|"]
    for row in rows:
        out.append(f"| {row['t']:.1f} | {row['what']} | {row['target']} | {row['seen']} | {row['lines']} "
                   f"| {row['held']} |")
    out.append("")
    out += [f"- {s}" for s in summary]
    return "\n".join(out) + "\n"
