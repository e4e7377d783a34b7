"""Viewers of one deployment for e2e/local, each in a thread of its own, each keeping
what it was shown as digests (a 1 GB step is millions of lines: not kept one by one):
how many lines, whether their seqs ran 1, 2, 3, ... with no gap or repeat, a BLAKE2b of
(seq, step, stream, message) of each, one of the raw bytes as sent, and how the stream
ended:

    SseViewer      Server-Sent Events (http.client), resuming with Last-Event-ID
    WsViewer       WebSocket (the `websockets` client), resuming with ?cursor=
    CliViewer      `kubectl logstream logs -f -o json` (SSE or --transport ws): the
                   CLI reconnects by itself; its exit status is the pipeline's
    McpWatcher     an MCP client (Python SDK) subscribed to the logs resource,
                   reconnecting and subscribing again when the server restarts

A viewer that loses its connection (a proxy cut, an edge killed) reconnects from the last
cursor it saw, as a client of the contract must; `reconnects` counts how often.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import subprocess
import threading
import time
import urllib.parse

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect


def canonical(line: dict) -> bytes:
    """What two doors must agree on for one line, as bytes for a digest."""
    return json.dumps([line["seq"], line["step"], line["stream"], line["message"]],
                      ensure_ascii=False).encode() + b"\n"


class Viewer:
    name = "viewer"

    def __init__(self, port: int, deployment: str, token: str):
        self.port, self.deployment, self.token = port, deployment, token
        self.count = 0
        # The first seq out of order (a gap or a repeat), as (position, seq); None: none.
        self.disorder: tuple[int, int] | None = None
        self.digest = hashlib.blake2b()
        self.raw_digest = hashlib.blake2b()
        # Every field of each line, by value (set `keep_values` before start).
        self.keep_values = False
        self.value_digest = hashlib.blake2b()
        self.last_cursor: str | None = None
        self.end: dict | None = None
        self.reconnects = 0
        self.errors: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=self.name)

    def start(self) -> "Viewer":
        self.thread.start()
        return self

    @property
    def cursor(self) -> str | None:
        return self.last_cursor

    @property
    def in_order(self) -> bool:
        return self.disorder is None

    def path(self, extra: dict | None = None) -> str:
        q = {"wait": "true", **(extra or {})}
        return f"/v1/deployments/{urllib.parse.quote(self.deployment)}/stream?{urllib.parse.urlencode(q)}"

    def _run(self) -> None:
        try:
            while self.end is None:
                try:
                    self.follow()
                except (OSError, http.client.HTTPException, WebSocketException) as e:
                    self.errors.append(f"{type(e).__name__}: {e}")
                if self.end is None:
                    self.reconnects += 1
                    time.sleep(0.2)
        finally:
            self.done.set()

    def take(self, raw: bytes) -> None:
        line = json.loads(raw)
        self.count += 1
        if line["seq"] != self.count and self.disorder is None:
            self.disorder = (self.count, line["seq"])
        self.digest.update(canonical(line))
        self.raw_digest.update(raw + b"\n")
        if self.keep_values:
            self.value_digest.update(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        self.last_cursor = line.get("cursor")


class SseViewer(Viewer):
    name = "SSE"

    def follow(self) -> None:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {self.token}"}
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        c.request("GET", self.path(), headers=headers)
        r = c.getresponse()
        if r.status != 200:
            body = r.read()[:300]
            c.close()
            raise http.client.HTTPException(f"HTTP {r.status}: {body!r}")
        event, data = "message", []
        try:
            while True:
                raw = r.fp.readline()
                if not raw:
                    return
                raw = raw.rstrip(b"\r\n")
                if raw == b"":
                    if data:
                        payload = b"\n".join(data)
                        if event == "line":
                            self.take(payload)
                        elif event == "end":
                            self.end = json.loads(payload)
                            return
                        elif event == "reconnect":
                            return
                    event, data = "message", []
                elif raw.startswith(b"event:"):
                    event = raw[6:].strip().decode()
                elif raw.startswith(b"data:"):
                    data.append(raw[5:].removeprefix(b" "))
        finally:
            c.close()


class WsViewer(Viewer):
    name = "WebSocket"

    def follow(self) -> None:
        extra = {"cursor": self.cursor} if self.cursor else {}
        url = f"ws://127.0.0.1:{self.port}{self.path(extra)}"
        with ws_connect(url, additional_headers={"Authorization": f"Bearer {self.token}"},
                        open_timeout=30, max_size=None) as ws:
            for frame in ws:
                msg = json.loads(frame)
                if msg["type"] == "lines":
                    for line in msg["lines"]:
                        self.take(json.dumps(line, separators=(",", ":")).encode())
                elif msg["type"] == "end":
                    self.end = {k: v for k, v in msg.items() if k != "type"}
                    return


class CliViewer(Viewer):
    """`kubectl-logstream logs DEPLOYMENT -f -o json`: the CLI's own reconnects, its exit
    status at the end (the pipeline's)."""

    def __init__(self, cli: str, server: str, deployment: str, token: str, transport: str):
        super().__init__(0, deployment, token)
        self.name = f"kubectl logstream logs -f ({transport})"
        self.cmd = [cli, "logs", deployment, "-f", "-o", "json", "--transport", transport,
                    "--server", server, "--token", token]
        self.exit_code: int | None = None
        self.stderr = b""

    def _run(self) -> None:
        try:
            p = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            err = threading.Thread(target=lambda: setattr(self, "stderr", p.stderr.read()), daemon=True)
            err.start()
            for raw in p.stdout:
                self.take(raw.rstrip(b"\n"))
            self.exit_code = p.wait()
            err.join()
            self.end = {"exit_code": self.exit_code}
        finally:
            self.done.set()


class McpWatcher:
    """An MCP client on the store's /mcp subscribed to the deployment's logs resource:
    counts `notifications/resources/updated`, opens a new session (and subscribes again)
    when the server goes away, until `stop`."""

    def __init__(self, url: str, deployment: str, token: str):
        self.url, self.deployment, self.token = url, deployment, token
        self.uri = f"logstream://deployments/{deployment}/logs"
        self.updates = 0
        self.sessions = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name="MCP")

    def start(self) -> "McpWatcher":
        self.thread.start()
        return self

    async def _run(self) -> None:
        while not self.stop.is_set():
            try:
                await self._session()
            except BaseException as e:  # the SDK raises exception groups on a lost server
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                while isinstance(e, BaseExceptionGroup) and e.exceptions:
                    e = e.exceptions[0]
                self.errors.append(f"{type(e).__name__}: {str(e)[:300]}")
            await asyncio.sleep(0.3)

    async def _session(self) -> None:
        from mcp import ClientSession
        from pydantic import AnyUrl

        async def handler(message) -> None:
            root = getattr(message, "root", None)
            if getattr(root, "method", None) == "notifications/resources/updated" \
                    and str(root.params.uri) == self.uri:
                self.updates += 1

        async with open_session(self.url, self.token, handler) as s:
            self.sessions += 1
            await s.subscribe_resource(AnyUrl(self.uri))
            while not self.stop.is_set():
                await asyncio.sleep(0.2)
                await s.send_ping()


def open_session(url: str, token: str, handler=None):
    """`async with`: an initialized MCP ClientSession over streamable HTTP."""
    import contextlib

    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    @contextlib.asynccontextmanager
    async def session():
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(create_mcp_http_client(
                headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(30, read=60)))
            read, write, *_ = await stack.enter_async_context(streamable_http_client(url, http_client=client))
            s = await stack.enter_async_context(ClientSession(read, write, message_handler=handler))
            await s.initialize()
            yield s

    return session()
