"""The MCP server (issue 22) through a real client, the Python MCP SDK: streamable HTTP at
the gateway's `/mcp` and stdio through `kubectl-logstream mcp`. Every test makes its own
tenants and deployments; lines go in through the HTTP API (urllib), as a runner's would.

The `[mcp]` limits of the gateway under test are in conftest.MCP_LIMITS (read here through
`gateway.limits`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import string
import threading
import time
import urllib.parse
import uuid

import pytest
from mcp import types
from mcp.shared.exceptions import McpError
from pydantic import AnyUrl

TOOLS = {"list_deployments", "get_deployment", "get_logs", "search_logs", "wait_for_completion"}
NOT_FOUND = -32002  # resource/deployment not found
INVALID_PARAMS = -32602
QUOTA = -32029
TRANSPORTS = ["http", "stdio"]
NOTIFY_WAIT = 10.0  # seconds to wait for a resources/updated (notify_interval is 1 s)


# --- helpers ---

def unique(prefix: str) -> str:
    """A deployment id, tenant or subject no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def run(coro, timeout: float = 90.0):
    """Runs one test's async body (the SDK is anyio on asyncio) with an overall deadline.
    A failure comes out as itself, not inside the exception groups of the SDK's task
    groups."""
    try:
        return asyncio.run(asyncio.wait_for(coro, timeout))
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def status_uri(dep: str) -> str:
    return f"logstream://deployments/{dep}"


def logs_uri(dep: str) -> str:
    return f"logstream://deployments/{dep}/logs"


async def call(s, tool: str, **args) -> dict:
    """tools/call that must succeed; its structuredContent (the SDK has already checked it
    against the tool's outputSchema)."""
    r = await s.call_tool(tool, args)
    assert not r.isError, f"{tool}({args}) returned an error result: {r.content}"
    assert isinstance(r.structuredContent, dict), f"{tool}({args}): no structuredContent: {r}"
    return r.structuredContent


def mcp_error(exc: BaseException | None, _depth: int = 0) -> McpError | None:
    """The JSON-RPC error in `exc` (looking inside exception groups and causes)."""
    if exc is None or _depth > 8:
        return None
    if isinstance(exc, McpError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            if (found := mcp_error(e, _depth + 1)) is not None:
                return found
    return mcp_error(exc.__cause__ or exc.__context__, _depth + 1)


async def error_of(awaitable, code: int, *words: str) -> types.ErrorData:
    """Awaits something that must fail with JSON-RPC error `code` whose message contains
    every one of `words` (case-insensitive); returns the error."""
    try:
        result = await awaitable
    except Exception as e:  # noqa: BLE001 - inspected below
        err = mcp_error(e)
        if err is None:
            raise
    else:
        pytest.fail(f"expected JSON-RPC error {code}, got the result {result!r:.1500}")
    e = err.error
    assert e.code == code, f"expected code {code}, got {e.code}: {e.message} (data {e.data})"
    for w in words:
        assert w.lower() in e.message.lower(), f"{w!r} not in the error message {e.message!r}"
    return e


async def read_one(s, uri: str):
    """resources/read of `uri`: its one text content."""
    r = await s.read_resource(AnyUrl(uri))
    assert len(r.contents) == 1, f"{uri}: {len(r.contents)} contents"
    c = r.contents[0]
    assert isinstance(c, types.TextResourceContents), f"{uri}: not text: {c!r:.300}"
    assert str(c.uri) == uri
    return c


def seqs(page: dict) -> list[int]:
    return [line["seq"] for line in page["lines"]]


LINE_FIELDS = {"seq", "cursor", "ts", "step", "stream", "level", "message"}


# === initialize, listings, resources ===

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_initialize_lists_and_reads_resources(gateway, transport):
    t = gateway.tenant()
    dep = unique("catalog")
    # Odd lines have a step, even ones none (shown as `-` in the logs resource).
    t.push(dep, [{"step": "build", "message": f"line {n}"} if n % 2 else {"message": f"line {n}"}
                 for n in range(1, 251)])

    async def body():
        async with gateway.session(transport, t.token) as s:
            assert s.server.serverInfo.name == "logstream"
            caps = s.server.capabilities
            assert caps.tools is not None
            assert caps.resources is not None and caps.resources.subscribe is True

            tools = {tool.name: tool for tool in (await s.list_tools()).tools}
            assert set(tools) == TOOLS
            for tool in tools.values():
                assert tool.description, tool.name
                assert tool.inputSchema.get("type") == "object", (tool.name, tool.inputSchema)
                assert tool.outputSchema and tool.outputSchema.get("type") == "object", (tool.name, tool.outputSchema)

            def props(name, schema="inputSchema"):
                return set((getattr(tools[name], schema) or {}).get("properties", {}))

            assert {"status", "since", "query", "limit", "cursor"} <= props("list_deployments")
            assert {"deployment"} <= props("get_deployment")
            assert {"deployment", "lines", "cursor", "direction", "level", "step", "grep", "regex"} <= props("get_logs")
            assert {"query", "regex", "since", "until", "status", "deployments", "limit"} <= props("search_logs")
            assert {"deployment", "timeout_secs", "error_lines"} <= props("wait_for_completion")
            for name in ("get_deployment", "get_logs", "wait_for_completion"):
                assert "deployment" in tools[name].inputSchema.get("required", []), name
            assert "query" in tools["search_logs"].inputSchema.get("required", [])
            assert {"deployments"} <= props("list_deployments", "outputSchema")
            assert {"deployment", "status", "lines", "older_cursor", "newer_cursor", "at_start", "at_end",
                    "truncated"} <= props("get_logs", "outputSchema")
            assert {"matches", "deployments_searched", "truncated"} <= props("search_logs", "outputSchema")
            assert {"deployment", "status", "exit_code", "completed", "waited_secs", "lines",
                    "error_lines"} <= props("wait_for_completion", "outputSchema")

            templates = {rt.uriTemplate: rt for rt in (await s.list_resource_templates()).resourceTemplates}
            assert set(templates) == {"logstream://deployments/{id}", "logstream://deployments/{id}/logs"}
            assert templates["logstream://deployments/{id}"].mimeType == "application/json"
            assert templates["logstream://deployments/{id}/logs"].mimeType == "text/plain"

            listed = [str(r.uri) for r in (await s.list_resources()).resources]
            assert status_uri(dep) in listed and logs_uri(dep) in listed, listed
            assert len(listed) == 2, f"the tenant has one deployment: {listed}"

            c = await read_one(s, status_uri(dep))
            assert c.mimeType == "application/json"
            status = json.loads(c.text)
            assert status["id"] == dep and status["status"] == "running" and status["lines"] == 250, status

            c = await read_one(s, logs_uri(dep))
            assert c.mimeType == "text/plain"
            text = c.text.rstrip("\n").split("\n")
            assert text[0].startswith(f"# deployment {dep}: running, 250 lines"), text[0]
            assert text[1:101] == [f"{n} [{'build' if n % 2 else '-'}] line {n}" for n in range(151, 251)]
            notes = text[101:]
            assert notes and all(n.startswith("# ") for n in notes), notes
            note = "\n".join(notes)
            assert "get_logs" in note, note
            # The older cursor it names is the one get_logs gives for the same last 100 lines.
            page = await call(s, "get_logs", deployment=dep)
            assert seqs(page) == list(range(151, 251))
            assert page["older_cursor"] and page["older_cursor"] in note, (page["older_cursor"], note)

    run(body())


def test_stdio_takes_server_and_token_from_the_environment(gateway):
    t = gateway.tenant()
    dep = unique("env")
    t.push(dep, ["hello"])

    async def body():
        async with gateway.session("stdio", None, args=["mcp"],
                                   env={"LOGSTREAM_SERVER": gateway.url, "LOGSTREAM_TOKEN": t.token}) as s:
            assert s.server.serverInfo.name == "logstream"
            d = await call(s, "get_deployment", deployment=dep)
            assert d["id"] == dep and d["lines"] == 1

    run(body())


# === tools ===

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_list_deployments_and_get_deployment(gateway, transport):
    t = gateway.tenant()
    running, ok, bad = unique("run"), unique("ok"), unique("bad")
    t.push(running, ["starting"])
    t.push(ok, [{"step": "build", "message": "b"}, {"step": "test", "message": "t"}])
    t.complete(ok, "succeeded")
    t.push(bad, [{"step": "build", "message": "compiling"},
                 {"step": "deploy", "level": "error", "message": "boom"},
                 {"step": "build", "message": "again"}])
    t.complete(bad, "failed", 3)

    async def body():
        async with gateway.session(transport, t.token) as s:
            every = await call(s, "list_deployments")
            assert [d["id"] for d in every["deployments"]] == [bad, ok, running], "newest first"
            assert not every.get("next_cursor")
            by_id = {d["id"]: d for d in every["deployments"]}
            assert by_id[bad]["status"] == "failed" and by_id[bad]["exit_code"] == 3
            assert by_id[bad]["lines"] == 3 and by_id[bad]["steps"] == ["build", "deploy"]
            assert by_id[ok]["status"] == "succeeded" and by_id[ok]["exit_code"] == 0
            assert by_id[running]["status"] == "running" and by_id[running]["lines"] == 1
            for d in every["deployments"]:
                assert {"created_at", "updated_at"} <= set(d), d
            assert by_id[bad]["completed_at"] and not by_id[running].get("completed_at")

            failed = await call(s, "list_deployments", status="failed")
            assert [d["id"] for d in failed["deployments"]] == [bad]
            some = await call(s, "list_deployments", status="running,failed")
            assert [d["id"] for d in some["deployments"]] == [bad, running]
            found = await call(s, "list_deployments", query=ok.split("-")[-1])
            assert [d["id"] for d in found["deployments"]] == [ok], "query: an id substring"
            recent = await call(s, "list_deployments", since="1h")
            assert {d["id"] for d in recent["deployments"]} == {bad, ok, running}

            first = await call(s, "list_deployments", limit=2)
            assert [d["id"] for d in first["deployments"]] == [bad, ok]
            assert first.get("next_cursor")
            rest = await call(s, "list_deployments", limit=2, cursor=first["next_cursor"])
            assert [d["id"] for d in rest["deployments"]] == [running]
            assert not rest.get("next_cursor")

            d = await call(s, "get_deployment", deployment=bad)
            assert d["id"] == bad and d["status"] == "failed" and d["exit_code"] == 3
            assert d["lines"] == 3 and d["steps"] == ["build", "deploy"]
            assert d["first_seq"] == 1 and d["last_seq"] == 3
            d = await call(s, "get_deployment", deployment=running)
            assert d["status"] == "running" and d.get("exit_code") is None and d["last_seq"] == 1

            await error_of(s.call_tool("get_deployment", {"deployment": unique("nope")}), NOT_FOUND, "not found")

    run(body())


def _filter_records():
    # 250 lines: steps build (1..125) and test (126..250); every 25th an error, every
    # other 10th a warning; "Alpha" in every 3rd message.
    for n in range(1, 251):
        level = "error" if n % 25 == 0 else "warn" if n % 10 == 0 else "info"
        yield {"step": "build" if n <= 125 else "test", "level": level, "stream": "stderr" if level == "error" else "stdout",
               "message": f"line {n} {'Alpha' if n % 3 == 0 else 'beta'}"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_get_logs(gateway, transport):
    t = gateway.tenant()
    dep = unique("logs")
    t.push(dep, list(_filter_records()))

    async def body():
        async with gateway.session(transport, t.token) as s:
            page = await call(s, "get_logs", deployment=dep)
            assert page["deployment"] == dep and page["status"] == "running"
            assert seqs(page) == list(range(151, 251)), "default: the last 100 lines, oldest first"
            assert page["at_end"] is True and page["at_start"] is False and page["truncated"] is False
            assert page["older_cursor"]
            line = page["lines"][-1]
            assert LINE_FIELDS <= set(line), line
            assert line["message"] == "line 250 beta" and line["level"] == "error" and line["step"] == "test"
            assert line["stream"] == "stderr" and line["ts"] and line["cursor"]

            assert seqs(await call(s, "get_logs", deployment=dep, lines=10)) == list(range(241, 251))

            errors = await call(s, "get_logs", deployment=dep, level="error")
            assert seqs(errors) == list(range(25, 251, 25))
            assert {line["level"] for line in errors["lines"]} == {"error"}
            assert errors["at_start"] is True

            build = await call(s, "get_logs", deployment=dep, step="build")
            assert seqs(build) == list(range(26, 126)), "the last 100 lines of step build"
            assert seqs(await call(s, "get_logs", deployment=dep, step="test", level="error")) == [150, 175, 200, 225, 250]

            alpha = await call(s, "get_logs", deployment=dep, grep="ALPHA", lines=1000)
            assert seqs(alpha) == list(range(3, 251, 3)), "grep is case-insensitive text"
            assert alpha["at_start"] is True
            literal = await call(s, "get_logs", deployment=dep, grep="line 1.5 ")
            assert seqs(literal) == [], "without regex, grep is plain text ('.' is a dot)"
            rx = await call(s, "get_logs", deployment=dep, grep="line 1.5 ", regex=True)
            assert seqs(rx) == list(range(105, 200, 10))
            rx = await call(s, "get_logs", deployment=dep, grep=r"^line (7|77) ", regex=True)
            assert seqs(rx) == [7, 77]

            # Cursors: every line's own cursor pages from it in either direction.
            everything = await call(s, "get_logs", deployment=dep, lines=1000)
            assert seqs(everything) == list(range(1, 251)) and everything["at_start"] is True
            cursor = {line["seq"]: line["cursor"] for line in everything["lines"]}
            fwd = await call(s, "get_logs", deployment=dep, cursor=cursor[100], direction="forward", lines=5)
            assert seqs(fwd) == [101, 102, 103, 104, 105]
            back = await call(s, "get_logs", deployment=dep, cursor=cursor[100], direction="backward", lines=5)
            assert seqs(back) == [95, 96, 97, 98, 99], "backward: older than the cursor, oldest first"
            back = await call(s, "get_logs", deployment=dep, cursor=cursor[100], lines=5)
            assert seqs(back) == [95, 96, 97, 98, 99], "the default direction is backward"
            end = await call(s, "get_logs", deployment=dep, cursor=cursor[248], direction="forward", lines=10)
            assert seqs(end) == [249, 250] and end["at_end"] is True
            older = await call(s, "get_logs", deployment=dep, cursor=page["older_cursor"], direction="backward", lines=3)
            assert seqs(older) == [148, 149, 150]

            await error_of(s.call_tool("get_logs", {"deployment": dep, "cursor": "not-a-cursor"}),
                           INVALID_PARAMS, "cursor")
            await error_of(s.call_tool("get_logs", {"deployment": unique("nope")}), NOT_FOUND, "not found")

    run(body())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_search_logs(gateway, transport):
    a, b = gateway.tenant("a"), gateway.tenant("b")
    needle = "needle" + secrets.token_hex(6)
    d1, d2, other = unique("first"), unique("second"), unique("other")

    def recs(hits):
        return [{"step": "s", "level": "warn", "message": f"{needle} in line {n}"} if n in hits
                else {"message": f"noise {n}"} for n in range(1, 41)]

    a.push(d1, recs({5, 10, 15}))
    a.push(d2, recs({7, 14, 21}))
    b.push(other, recs({2, 3}))

    async def body():
        async with gateway.session(transport, a.token) as s:
            r = await call(s, "search_logs", query=needle)
            got = [(m["deployment"], m["seq"]) for m in r["matches"]]
            assert got == [(d2, 21), (d2, 14), (d2, 7), (d1, 15), (d1, 10), (d1, 5)], \
                "newest deployment first, newest match first; never another tenant's"
            assert r["truncated"] is False and r["deployments_searched"] >= 2
            m = r["matches"][0]
            assert {"deployment", "seq", "cursor", "ts", "step", "level", "message"} <= set(m), m
            assert m["message"] == f"{needle} in line 21" and m["level"] == "warn" and m["step"] == "s"

            r = await call(s, "search_logs", query=needle, limit=3)
            assert [(m["deployment"], m["seq"]) for m in r["matches"]] == [(d2, 21), (d2, 14), (d2, 7)]
            assert r["truncated"] is True, "limit stopped the search"

            r = await call(s, "search_logs", query=needle + r" in line (5|14)$", regex=True)
            assert [(m["deployment"], m["seq"]) for m in r["matches"]] == [(d2, 14), (d1, 5)]

            r = await call(s, "search_logs", query=needle, deployments=d1.split("-")[-1])
            assert [(m["deployment"], m["seq"]) for m in r["matches"]] == [(d1, 15), (d1, 10), (d1, 5)]

            r = await call(s, "search_logs", query="no such text " + secrets.token_hex(8))
            assert r["matches"] == [] and r["truncated"] is False

        async with gateway.session(transport, b.token) as s:
            r = await call(s, "search_logs", query=needle)
            assert [(m["deployment"], m["seq"]) for m in r["matches"]] == [(other, 3), (other, 2)]

    run(body())


class Later:
    """Runs `fn` in a thread after `delay` seconds; `join()` re-raises what it raised."""

    def __init__(self, delay: float, fn):
        self.error: BaseException | None = None

        def go():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised by join()
                self.error = e

        self.timer = threading.Timer(delay, go)
        self.timer.start()

    def join(self):
        self.timer.join()
        if self.error:
            raise self.error


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wait_for_completion(gateway, transport):
    t = gateway.tenant()
    dep, still, quiet = unique("wait"), unique("still"), unique("fallback")
    marker = secrets.token_hex(6)
    t.push(dep, [{"message": f"info {n}"} for n in range(1, 31)]
           + [{"level": "error", "message": f"E{k}"} for k in (1, 2, 3)]
           + [{"message": "info again"}])
    t.push(still, ["working"])
    t.push(quiet, ["all good", "fatal: disk full", "still fine", "thread main panic: oops", "bye"])
    t.complete(quiet, "failed")

    def fail_it():
        t.push(dep, [{"step": "deploy", "level": "error", "message": f"deploy failed: {marker}"}])
        t.complete(dep, "failed", 2)

    async def body():
        async with gateway.session(transport, t.token) as s:
            await s.list_tools()
            started = time.monotonic()
            later = Later(1.0, fail_it)
            try:
                r = await call(s, "wait_for_completion", deployment=dep, timeout_secs=30)
            finally:
                await asyncio.to_thread(later.join)
            elapsed = time.monotonic() - started
            assert r["deployment"] == dep and r["completed"] is True
            assert r["status"] == "failed" and r["exit_code"] == 2 and r["lines"] == 35
            assert 0.8 <= elapsed < 20, f"returned after {elapsed:.2f} s: it must wait for the completion"
            assert 0 <= r["waited_secs"] < 20
            msgs = [line["message"] for line in r["error_lines"]]
            assert msgs == ["E1", "E2", "E3", f"deploy failed: {marker}"], "error lines, oldest first"
            assert {line["level"] for line in r["error_lines"]} == {"error"}
            assert LINE_FIELDS <= set(r["error_lines"][-1])

            r = await call(s, "wait_for_completion", deployment=dep, error_lines=2)
            assert r["completed"] is True
            assert [line["message"] for line in r["error_lines"]] == ["E3", f"deploy failed: {marker}"]

            # No error-level line: the lines that read like errors.
            r = await call(s, "wait_for_completion", deployment=quiet)
            assert r["completed"] is True and r["status"] == "failed" and r["exit_code"] == 1
            assert [line["message"] for line in r["error_lines"]] == ["fatal: disk full", "thread main panic: oops"]

            started = time.monotonic()
            r = await call(s, "wait_for_completion", deployment=still, timeout_secs=1)
            elapsed = time.monotonic() - started
            assert r["completed"] is False and r["status"] == "running" and r.get("exit_code") is None
            assert r["lines"] == 1
            assert 0.9 <= elapsed < 10, f"a 1 s timeout returned after {elapsed:.2f} s"

            await error_of(s.call_tool("wait_for_completion", {"deployment": unique("nope"), "timeout_secs": 1}),
                           NOT_FOUND, "not found")

    run(body())


# === paging ===

async def _page_backward(s, dep: str, lines: int, limit_pages: int = 100) -> list[dict]:
    """get_logs from the end to the start with older_cursor; the pages as returned."""
    pages = [await call(s, "get_logs", deployment=dep, lines=lines)]
    while not pages[-1]["at_start"]:
        assert len(pages) < limit_pages, "paging backward does not end"
        cursor = pages[-1]["older_cursor"]
        assert cursor, f"no older_cursor before at_start: {pages[-1]!r:.300}"
        pages.append(await call(s, "get_logs", deployment=dep, lines=lines, cursor=cursor, direction="backward"))
    return pages


async def _page_forward(s, dep: str, first: dict, lines: int, limit_pages: int = 100) -> list[dict]:
    """get_logs from `first` to the end with newer_cursor; the pages as returned."""
    pages = [first]
    while not pages[-1]["at_end"]:
        assert len(pages) < limit_pages, "paging forward does not end"
        cursor = pages[-1]["newer_cursor"]
        assert cursor, f"no newer_cursor before at_end: {pages[-1]!r:.300}"
        pages.append(await call(s, "get_logs", deployment=dep, lines=lines, cursor=cursor, direction="forward"))
    return pages


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cursor_paging_covers_every_line_once(gateway, transport):
    n = 2345
    t = gateway.tenant()
    dep = unique("paging")
    t.push(dep, [{"message": f"row {k}"} for k in range(1, n + 1)])

    async def body():
        async with gateway.session(transport, t.token) as s:
            back = await _page_backward(s, dep, 1000)
            got = [seq for p in reversed(back) for seq in seqs(p)]
            assert got == list(range(1, n + 1)), "backward paging: every line once, in order"
            assert [line["message"] for p in reversed(back) for line in p["lines"]] == [f"row {k}" for k in range(1, n + 1)]
            assert seqs(back[0]) == list(range(1346, 2346)) and back[0]["at_end"] is True
            assert not any(p["truncated"] for p in back)

            start = next(p for p in reversed(back) if p["lines"])
            assert seqs(start)[0] == 1
            fwd = await _page_forward(s, dep, start, 1000)
            got = [seq for p in fwd for seq in seqs(p)]
            assert got == list(range(1, n + 1)), "forward paging: every line once, in order"

            # The page that holds the first line says at_start, the one that holds the last
            # line at_end ("no newer lines now"): no extra empty page to find out.
            assert [len(p["lines"]) for p in back] == [1000, 1000, 345]
            assert [len(p["lines"]) for p in fwd] == [345, 1000, 1000], \
                f"at_end of the page {seqs(fwd[2])[0]}..{seqs(fwd[2])[-1]} (the last line is {n}): {fwd[2]['at_end']}"

    run(body())


def test_paging_flags_at_exact_page_boundaries(gateway):
    """20 lines read 10 at a time: the page holding line 1 is at_start, the page holding
    line 20 is at_end, whichever way it was read."""
    t = gateway.tenant()
    dep = unique("exact")
    t.push(dep, [f"row {k}" for k in range(1, 21)])

    async def body():
        async with gateway.session("http", t.token) as s:
            last = await call(s, "get_logs", deployment=dep, lines=10)
            assert seqs(last) == list(range(11, 21)) and last["at_end"] is True and last["at_start"] is False
            first = await call(s, "get_logs", deployment=dep, lines=10, cursor=last["older_cursor"], direction="backward")
            assert seqs(first) == list(range(1, 11))
            assert first["at_start"] is True, "backward page 1..10 of a 20-line log: at_start"
            again = await call(s, "get_logs", deployment=dep, lines=10, cursor=first["newer_cursor"], direction="forward")
            assert seqs(again) == list(range(11, 21))
            assert again["at_end"] is True, "forward page 11..20 of a 20-line log: at_end"

    run(body())


def test_max_result_bytes_truncates_and_paging_still_covers_everything(gateway):
    n, width = 300, 2000
    limit = gateway.limits["max_result_bytes"]
    t = gateway.tenant()
    dep = unique("wide")
    t.push(dep, [{"message": f"row {k:04d} " + "x" * width} for k in range(1, n + 1)])

    async def body():
        async with gateway.session("http", t.token) as s:
            back = await _page_backward(s, dep, 1000)
            first = back[0]
            assert first["truncated"] is True, "1000 lines of 2 KB are more than max_result_bytes"
            assert 0 < len(first["lines"]) <= limit // width
            assert seqs(first)[-1] == n, "a truncated backward page keeps the newest lines"
            for p in back:
                assert sum(len(line["message"]) for line in p["lines"]) <= limit
            got = [seq for p in reversed(back) for seq in seqs(p)]
            assert got == list(range(1, n + 1)), "every line once, in order, through truncated pages"

            start = next(p for p in reversed(back) if p["lines"])
            fwd = await _page_forward(s, dep, start, 1000)
            assert any(p["truncated"] for p in fwd[1:])
            got = [seq for p in fwd for seq in seqs(p)]
            assert got == list(range(1, n + 1))

    run(body())


# === subscriptions ===

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_subscribe_announces_new_lines_and_completion(gateway, transport):
    t = gateway.tenant()
    dep = unique("live")
    t.push(dep, ["first"])
    uris = [logs_uri(dep), status_uri(dep)]

    async def body():
        async with gateway.session(transport, t.token) as s:
            for uri in uris:
                await s.subscribe_resource(AnyUrl(uri))
            await asyncio.to_thread(t.push, dep, [f"more {k}" for k in range(5)])
            for uri in uris:
                await s.inbox.wait_for(lambda: s.inbox.updated(uri), NOTIFY_WAIT, f"resources/updated of {uri}")
            c = await read_one(s, logs_uri(dep))
            assert "more 4" in c.text

            before = {uri: len(s.inbox.updated(uri)) for uri in uris}
            await asyncio.to_thread(t.complete, dep, "succeeded")
            for uri in uris:
                await s.inbox.wait_for(lambda: len(s.inbox.updated(uri)) > before[uri], NOTIFY_WAIT,
                                       f"the resources/updated of {uri} at completion")
            status = json.loads((await read_one(s, status_uri(dep))).text)
            assert status["status"] == "succeeded"

    run(body())


def test_unsubscribe_stops_updates(gateway):
    t = gateway.tenant()
    kept, dropped = unique("kept"), unique("dropped")
    t.push(kept, ["a"])
    t.push(dropped, ["a"])

    async def body():
        async with gateway.session("http", t.token) as s:
            await s.subscribe_resource(AnyUrl(logs_uri(kept)))
            await s.subscribe_resource(AnyUrl(logs_uri(dropped)))
            await s.unsubscribe_resource(AnyUrl(logs_uri(dropped)))
            await asyncio.to_thread(t.push, dropped, ["b"])
            await asyncio.to_thread(t.push, kept, ["b"])
            await s.inbox.wait_for(lambda: s.inbox.updated(logs_uri(kept)), NOTIFY_WAIT, "the kept subscription's update")
            # Nothing announces an absence: give the dropped one a notify interval and a half.
            await asyncio.sleep(1.5)
            assert s.inbox.updated(logs_uri(dropped)) == [], "an unsubscribed resource was announced"

    run(body())


# === tenant isolation ===

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_another_tenants_deployment_is_not_found(gateway, transport):
    a, b = gateway.tenant("a"), gateway.tenant("b")
    dep = unique("private")
    own = unique("own")
    nope = unique("private")
    needle = "isolated" + secrets.token_hex(6)
    a.push(dep, [f"{needle} private line", "another"])
    b.push(own, ["b's line without the word"])

    async def body():
        async with gateway.session(transport, b.token) as s:
            unknown_msgs, foreign_msgs = [], []
            for target, msgs in ((nope, unknown_msgs), (dep, foreign_msgs)):
                for aw in (s.call_tool("get_deployment", {"deployment": target}),
                           s.call_tool("get_logs", {"deployment": target}),
                           s.call_tool("get_logs", {"deployment": target, "grep": needle}),
                           s.call_tool("wait_for_completion", {"deployment": target, "timeout_secs": 1}),
                           s.read_resource(AnyUrl(status_uri(target))),
                           s.read_resource(AnyUrl(logs_uri(target))),
                           s.subscribe_resource(AnyUrl(logs_uri(target))),
                           s.subscribe_resource(AnyUrl(status_uri(target)))):
                    e = await error_of(aw, NOT_FOUND, "not found")
                    msgs.append(e.message.replace(target, "ID"))
            assert foreign_msgs == unknown_msgs, "another tenant's id must read exactly like an unknown one"

            listed = [str(r.uri) for r in (await s.list_resources()).resources]
            assert status_uri(own) in listed
            assert not [u for u in listed if dep in u], listed
            ids = [d["id"] for d in (await call(s, "list_deployments"))["deployments"]]
            assert ids == [own]
            assert (await call(s, "list_deployments", query=dep))["deployments"] == []
            r = await call(s, "search_logs", query=needle)
            assert r["matches"] == [], r
            r = await call(s, "search_logs", query="private")
            assert r["matches"] == [], r

        async with gateway.session(transport, a.token) as s:  # the owner does see it
            assert (await call(s, "get_deployment", deployment=dep))["lines"] == 2
            assert [m["deployment"] for m in (await call(s, "search_logs", query=needle))["matches"]] == [dep]

    run(body())


# === limits ===

def test_argument_limits(gateway):
    t = gateway.tenant()
    dep = unique("limits")
    t.push(dep, ["x"])
    max_lines = gateway.limits["max_lines"]

    async def body():
        async with gateway.session("http", t.token) as s:
            assert len((await call(s, "get_logs", deployment=dep, lines=max_lines))["lines"]) == 1
            await error_of(s.call_tool("get_logs", {"deployment": dep, "lines": max_lines + 1}),
                           INVALID_PARAMS, "lines", str(max_lines))
            await error_of(s.call_tool("wait_for_completion", {"deployment": dep, "timeout_secs": 601}),
                           INVALID_PARAMS, "600")
            await error_of(s.read_resource(AnyUrl("logstream://elsewhere/x")), INVALID_PARAMS)
            await error_of(s.read_resource(AnyUrl(f"logstream://deployments/{dep}/nothing")), INVALID_PARAMS)

    run(body())


def test_an_invalid_id_in_a_resource_uri_is_not_found(gateway):
    """spec: "unknown/foreign/invalid id: -32002 (resource not found)"; "Bad URI: -32602"."""
    t = gateway.tenant()

    async def body():
        async with gateway.session("http", t.token) as s:
            for bad_id in ("-not-an-id", "x" * 129):
                for uri in (status_uri(bad_id), logs_uri(bad_id)):
                    await error_of(s.read_resource(AnyUrl(uri)), NOT_FOUND, "not found")

    run(body())


def test_concurrent_calls_over_max_calls_per_token_are_refused(gateway):
    t = gateway.tenant()
    dep = unique("busy")
    t.push(dep, ["running"])
    n = gateway.limits["max_calls_per_token"]

    async def body():
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(gateway.session("http", t.token)) for _ in range(n + 1)]
            for s in sessions:
                await s.list_tools()  # the SDK's output-schema cache: no request after a call

            async def waiting(s):
                try:
                    return await call(s, "wait_for_completion", deployment=dep, timeout_secs=20)
                except Exception as e:  # noqa: BLE001 - inspected below
                    return e

            tasks = [asyncio.create_task(waiting(s)) for s in sessions]
            done, _ = await asyncio.wait(tasks, timeout=15, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.to_thread(t.complete, dep, "succeeded")
            results = await asyncio.gather(*tasks)
            first = [task.result() for task in done]

            refused = [mcp_error(r) for r in results if isinstance(r, BaseException)]
            served = [r for r in results if isinstance(r, dict)]
            assert len(refused) == 1 and len(served) == n, f"{n + 1} calls at once with a limit of {n}: {results}"
            assert refused[0] is not None, results
            assert len(first) == 1 and isinstance(first[0], BaseException), \
                f"the refused call must come back at once, the others wait: {first}"
            e = refused[0].error
            assert e.code == QUOTA and "mcp.max_calls_per_token" in e.message, e
            assert e.data and e.data.get("status") == 429 and e.data.get("limit") == "mcp.max_calls_per_token", e.data
            assert all(r["completed"] is True and r["status"] == "succeeded" for r in served), served

            # The slots are free again.
            assert (await call(sessions[-1], "get_deployment", deployment=dep))["status"] == "succeeded"

    run(body())


def test_sessions_over_max_sessions_per_token_are_refused(gateway):
    t = gateway.tenant()
    n = gateway.limits["max_sessions_per_token"]

    async def open_refused():
        opened = False
        try:
            async with gateway.session("http", t.token):
                opened = True
        except Exception as e:  # noqa: BLE001 - inspected below
            err = mcp_error(e)
            if err is None:
                raise AssertionError(f"session {n + 1} failed, but not with a JSON-RPC error: {e!r}") from e
            return err.error
        assert not opened, f"session {n + 1} of one token was opened with max_sessions_per_token = {n}"

    async def body():
        async with contextlib.AsyncExitStack() as keep:
            for _ in range(n - 1):
                await keep.enter_async_context(gateway.session("http", t.token))
            async with gateway.session("http", t.token) as last:
                assert {tool.name for tool in (await last.list_tools()).tools} == TOOLS
                e = await open_refused()
                assert e.code == QUOTA and "mcp.max_sessions_per_token" in e.message, e
                assert e.data and e.data.get("status") == 429 and e.data.get("code") == "quota_exceeded", e.data
                assert e.data.get("limit") == "mcp.max_sessions_per_token", e.data
                assert isinstance(e.data.get("retry_after_secs"), int), e.data
                # Another subject of the same tenant has slots of its own.
                async with gateway.session("http", t.new_token()) as other:
                    await other.list_tools()
            # `last` closed (HTTP DELETE): its slot is free.
            async with gateway.session("http", t.token) as again:
                assert {tool.name for tool in (await again.list_tools()).tools} == TOOLS

    run(body())


# === HTTP transport rules (urllib: exactly what is sent) ===

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "logstream-e2e", "version": "1"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _rpc_reply(headers, body: bytes) -> dict:
    """The JSON-RPC answer of a streamable HTTP POST (a JSON body or an SSE stream)."""
    if headers.get("Content-Type", "").startswith("text/event-stream"):
        for event in body.decode().replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
            if data.strip():
                msg = json.loads(data)
                if "id" in msg:
                    return msg
        raise AssertionError(f"no JSON-RPC answer in the SSE body: {body[:500]!r}")
    return json.loads(body)


def _http_error(status, headers, body, want_status: int, want_code: str | None = None) -> dict:
    assert status == want_status, f"HTTP {status} (want {want_status}): {body[:500]!r}"
    assert headers.get("Content-Type", "").startswith("application/json"), headers.get("Content-Type")
    err = json.loads(body)["error"]
    assert isinstance(err.get("code"), str) and err["code"] and err.get("message"), err
    if want_code:
        assert err["code"] == want_code, err
    return err


def test_http_transport_rules(gateway):
    t = gateway.tenant()

    def post(headers, token=None, body=INIT):
        return gateway.request("POST", "/mcp", token, json.dumps(body).encode(), {**MCP_HEADERS, **headers})

    def initialized(status, headers, body, token):
        assert status == 200, f"HTTP {status}: {body[:500]!r}"
        reply = _rpc_reply(headers, body)
        assert reply.get("result", {}).get("serverInfo", {}).get("name") == "logstream", reply
        sid = headers.get("Mcp-Session-Id")
        assert sid, "initialize must start a session (Mcp-Session-Id)"
        status, _, body = gateway.request("DELETE", "/mcp", token, headers={"Mcp-Session-Id": sid})
        assert status in (200, 202, 204), f"DELETE: HTTP {status} {body[:300]!r}"
        return sid

    status, headers, body = post({})
    _http_error(status, headers, body, 401)
    assert headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(headers)
    status, headers, body = post({"Authorization": "Bearer not.a.token"})
    _http_error(status, headers, body, 401)
    assert headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(headers)
    # A token of a gateway with another key.
    forged = t.token.rsplit(".", 1)[0] + "." + base64.urlsafe_b64encode(b"x" * 32).decode().rstrip("=")
    _http_error(*post({}, forged), 401)

    _http_error(*post({"Host": "evil.example"}, t.new_token()), 403, "host_not_allowed")
    _http_error(*post({"Host": f"evil.example:{gateway.http_port}"}, t.new_token()), 403, "host_not_allowed")
    _http_error(*post({"Origin": "http://evil.example"}, t.new_token()), 403, "origin_not_allowed")
    _http_error(*post({"Origin": f"http://evil.example:{gateway.http_port}"}, t.new_token()), 403,
                "origin_not_allowed")

    tok = t.new_token()
    initialized(*post({"Origin": "http://localhost:5173"}, tok), tok)
    tok = t.new_token()
    initialized(*post({"Host": "localhost:9"}, tok), tok)  # a host without a port: any port
    tok = t.new_token()
    initialized(*post({"Logstream-Authorization": f"Bearer {tok}"}), tok)

    # The token goes with every request, not only initialize.
    tok = t.new_token()
    status, headers, body = post({}, tok)
    assert status == 200, body[:300]
    sid = headers.get("Mcp-Session-Id")
    assert sid
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    status, _, body = post({"Mcp-Session-Id": sid}, tok, note)
    assert status in (200, 202), f"notifications/initialized: HTTP {status} {body[:300]!r}"
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    _http_error(*post({"Mcp-Session-Id": sid}, None, listing), 401)
    status, headers, body = post({"Mcp-Session-Id": sid}, tok, listing)
    assert status == 200, body[:300]
    assert {tool["name"] for tool in _rpc_reply(headers, body)["result"]["tools"]} == TOOLS
    _http_error(*gateway.request("DELETE", "/mcp", None, headers={"Mcp-Session-Id": sid}), 401)
    status, _, _ = gateway.request("DELETE", "/mcp", tok, headers={"Mcp-Session-Id": sid})
    assert status in (200, 202, 204)


# === redaction ===

def _rand(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _b64url(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_secret_in_any_result(gateway, transport):
    t = gateway.tenant()
    dep = unique("leaky")
    marker = "nearby" + secrets.token_hex(5)
    ghp = "ghp_" + _rand(36)
    akia = "AKIA" + _rand(16, string.ascii_uppercase + "234567")
    aws_secret = _rand(40, string.ascii_letters + string.digits + "/+")
    slack = f"xoxb-{_rand(12, string.digits)}-{_rand(13, string.digits)}-{_rand(24)}"
    jwt = f"{_b64url({'alg': 'HS256', 'typ': 'JWT'})}.{_b64url({'sub': _rand(20), 'admin': True})}.{_rand(43, string.ascii_letters + string.digits + '-_')}"
    password = _rand(18)
    raw = [ghp, akia, aws_secret, slack, jwt, password]
    # The part of each secret that no mask style keeps (`stars` keeps prefixes like AKIA).
    forbidden = raw + [v[-16:] for v in raw] + jwt.split(".")[1:]
    lines = [
        f"{marker} cloning with {ghp} done",
        f"{marker} export AWS_ACCESS_KEY_ID={akia}",
        f"{marker} aws_secret_access_key = {aws_secret}",
        f"{marker} posting with {slack} to #deploys",
        f"{marker} session {jwt} accepted",
        f"{marker} connecting with password={password} now",
    ]
    t.push(dep, [{"message": "start"}] + [{"step": "secrets", "level": "error", "message": m} for m in lines])
    t.complete(dep, "failed", 1)
    stored = json.dumps(gateway.get_json(f"/v1/deployments/{dep}/logs?limit=100", t.token))
    assert marker in stored
    assert not [v for v in forbidden if v in stored], "the gateway stored a secret unmasked"

    seen: list[str] = []

    def check(what, result):
        dumped = result.model_dump_json() if hasattr(result, "model_dump_json") else json.dumps(result)
        texts = [dumped] + [c.text for c in getattr(result, "content", getattr(result, "contents", []))
                            if getattr(c, "text", None)]
        leaked = [v for v in forbidden if any(v in x for x in texts)]
        assert not leaked, f"{what} returned secret values: {leaked}"
        seen.append(dumped)

    async def body():
        async with gateway.session(transport, t.token) as s:
            r = await s.read_resource(AnyUrl(logs_uri(dep)))
            check("the logs resource", r)
            assert marker in r.contents[0].text
            check("the status resource", await s.read_resource(AnyUrl(status_uri(dep))))
            r = await s.call_tool("get_logs", {"deployment": dep})
            check("get_logs", r)
            assert len(r.structuredContent["lines"]) == 7
            check("get_logs grep", await s.call_tool("get_logs", {"deployment": dep, "grep": marker}))
            r = await s.call_tool("search_logs", {"query": marker})
            check("search_logs (neighbouring text)", r)
            assert len(r.structuredContent["matches"]) == 6
            for v in raw:
                r = await s.call_tool("search_logs", {"query": v})
                check(f"search_logs for a secret {v[:4]}...", r)
                assert r.structuredContent["matches"] == [], "a search for a masked secret must not match"
            r = await s.call_tool("wait_for_completion", {"deployment": dep, "timeout_secs": 5})
            check("wait_for_completion", r)
            assert len(r.structuredContent["error_lines"]) == 6
            assert all(marker in line["message"] for line in r.structuredContent["error_lines"])

    run(body())
    assert any("AKIA" in x for x in seen), "the masked lines were in the results (prefix kept)"


# === audit ===

def test_mcp_reads_are_audited(gateway):
    t = gateway.tenant()
    admin = t.new_token("admin")
    dep = unique("audited")
    t.push(dep, [f"line {k}" for k in range(10)])
    http_subject, stdio_subject = unique("mcp-http"), unique("mcp-stdio")

    async def body():
        async with gateway.session("http", t.new_token(subject=http_subject)) as s:
            await call(s, "get_logs", deployment=dep, lines=5)
        async with gateway.session("stdio", t.new_token(subject=stdio_subject)) as s:
            await read_one(s, logs_uri(dep))

    run(body())

    def reads() -> list[dict]:
        """Every `read` event of `dep`, newest first (backward pages to the start)."""
        events, cursor = [], None
        for _ in range(100):
            q = {"action": "read", "deployment": dep, "limit": "1000", "direction": "backward"}
            if cursor:
                q["cursor"] = cursor
            page = gateway.get_json("/v1/audit?" + urllib.parse.urlencode(q), admin)
            events += page["events"]
            if page.get("complete") or not page.get("next_cursor") or page["next_cursor"] == cursor:
                break
            cursor = page["next_cursor"]
        return events

    # Reads are recorded once queued; the writer makes them visible with its next batch.
    deadline = time.monotonic() + 15
    while True:
        events = reads()
        subjects = {e["subject"] for e in events}
        if {http_subject, stdio_subject} <= subjects or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {http_subject, stdio_subject} <= subjects, f"read events of {dep}: {events}"
    for e in events:
        assert e["action"] == "read" and e["tenant"] == t.name and e["deployment"] == dep and e["result"] == "ok", e
