"""Fixtures of the MCP suite: one real gateway per session, configured with small `[mcp]`
limits, and real MCP clients (the Python MCP SDK over streamable HTTP at `/mcp` and over
stdio through `kubectl-logstream mcp`).

    gateway   (session)  the `logstream-gateway serve --config` process ($LOGSTREAM_GATEWAY)
    cli       (session)  the `kubectl-logstream` binary ($LOGSTREAM_CLI)

    gateway.tenant()         a fresh tenant with a read/write token of its own subject
    tenant.push(dep, recs)   ingest through the HTTP API (urllib, as the API documents it)
    tenant.complete(dep, ..)
    gateway.session(transport, token)   `async with`: an initialized `ClientSession`
                                        ("http" or "stdio"); `s.inbox` holds what the
                                        server sent unasked (notifications, errors)

Every token gets a subject of its own, so the per-subject MCP limits of one test never
meet another test's sessions or calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

# The `[mcp]` limits the tests are written against (small, so they are reachable).
MCP_LIMITS = {
    "default_lines": 100,
    "max_lines": 1000,
    # 1000 short lines (~170 bytes of JSON each) fit; 1000 lines of 2 KB do not.
    "max_result_bytes": 262144,
    "max_sessions_per_token": 3,
    "max_calls_per_token": 2,
    "max_wait": "10m",
    "notify_interval": "1s",
    "search_deployments": 50,
}
CONFIG = (
    "[mcp]\n"
    'allowed_hosts = ["localhost", "127.0.0.1", "::1"]\n'
    "allowed_origins = []\n"
    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in MCP_LIMITS.items())
)

PUSH_MAX_BYTES = 4 << 20


def unique(prefix: str) -> str:
    """A deployment id, tenant or subject no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(env: str, name: str) -> str:
    b = os.environ.get(env)
    if not b:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/logstream/target"))
        b = os.path.join(target, "debug", name)
    if not os.access(b, os.X_OK):
        pytest.exit(f"no {name} binary at {b}: build it (./e2e/test does) or set {env}", 2)
    return b


class ApiError(Exception):
    def __init__(self, status: int, body: bytes, what: str):
        self.status = status
        self.body = body
        super().__init__(f"{what}: HTTP {status}: {body[:500]!r}")


class Inbox:
    """What a session received besides answers: notifications, and exceptions the
    transport reported (a stdout line that is not JSON-RPC, a broken stream)."""

    def __init__(self):
        self.notifications: list = []
        self.errors: list[Exception] = []
        self._changed = asyncio.Event()

    async def handler(self, message) -> None:
        if isinstance(message, Exception):
            self.errors.append(message)
        elif isinstance(message, types.ServerNotification):
            self.notifications.append(message.root)
        self._changed.set()

    def updated(self, uri: str) -> list:
        return [n for n in self.notifications
                if isinstance(n, types.ResourceUpdatedNotification) and str(n.params.uri) == uri]

    async def wait_for(self, predicate, timeout: float, what: str) -> None:
        """Returns once `predicate()` holds; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            if predicate():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                got = [f"{n.method} {getattr(n, 'params', None)}" for n in self.notifications]
                raise AssertionError(f"no {what} within {timeout} s; received: {got}; errors: {self.errors}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)


class Tenant:
    """A tenant and a read/write token (subject of its own) to act for it."""

    def __init__(self, gw: "Gateway", name: str):
        self.gw = gw
        self.name = name
        self.subject = unique("mcp-e2e")
        self.token = gw.token(name, subject=self.subject)

    def new_token(self, scopes: str = "logs:read,logs:write", subject: str | None = None) -> str:
        return self.gw.token(self.name, scopes, subject=subject or unique("mcp-e2e"))

    def push(self, deployment: str, records) -> dict:
        return self.gw.push(self.token, deployment, records)

    def complete(self, deployment: str, status: str, exit_code: int | None = None) -> dict:
        return self.gw.complete(self.token, deployment, status, exit_code)


class Gateway:
    """A running `logstream-gateway serve` with its own data dir, config and ports."""

    def __init__(self, binary: str, cli: str, root: Path):
        self.binary = binary
        self.cli = cli
        self.root = root
        self.data_dir = root / "data"
        self.config = root / "gateway.toml"
        self.log_path = root / "gateway.log"
        self.http_port = _free_port()
        self.grpc_port = _free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.mcp_url = self.url + "/mcp"
        self.limits = dict(MCP_LIMITS)
        self.proc: subprocess.Popen | None = None

    # --- process ---

    def start(self, timeout: float = 60.0) -> None:
        self.config.write_text(CONFIG)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--config", str(self.config),
             "--listen", f"127.0.0.1:{self.http_port}",
             "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
             "--data-dir", str(self.data_dir)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        # Process start-up is the one thing polled: nothing announces readiness otherwise.
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not answer /healthz in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no gateway log)"

    # --- tokens and tenants ---

    def token(self, tenant: str, scopes: str = "logs:read,logs:write", subject: str | None = None) -> str:
        """`logstream-gateway token`, signed with this gateway's dev key."""
        cmd = [self.binary, "token", "--data-dir", str(self.data_dir), "--tenant", tenant,
               "--scopes", scopes, "--subject", subject or unique("mcp-e2e")]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout.strip()

    def tenant(self, prefix: str = "t") -> Tenant:
        return Tenant(self, unique(prefix))

    # --- HTTP (urllib only) ---

    def request(self, method: str, path: str, token: str | None = None, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 60.0):
        """(status, headers, body) of one request; errors are returned, not raised."""
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def get_json(self, path: str, token: str):
        status, _, body = self.request("GET", path, token)
        if status != 200:
            raise ApiError(status, body, f"GET {path}")
        return json.loads(body)

    def push(self, token: str, deployment: str, records) -> dict:
        """Ingests `records` (dicts with ts, step, stream, level, message; a str is a
        message) as NDJSON, in as many requests as the body limit needs."""
        path = f"/v1/deployments/{urllib.parse.quote(deployment, safe='')}/logs"
        accepted, reply, chunk, size = 0, None, [], 0

        def flush():
            nonlocal accepted, reply, chunk, size
            if chunk:
                status, _, body = self.request("POST", path, token, b"".join(chunk),
                                               {"Content-Type": "application/x-ndjson"})
                if status != 200:
                    raise ApiError(status, body, f"POST {path}")
                reply = json.loads(body)
                accepted += reply["accepted"]
                chunk, size = [], 0

        for rec in records:
            if isinstance(rec, str):
                rec = {"message": rec}
            line = json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            if chunk and size + len(line) > PUSH_MAX_BYTES:
                flush()
            chunk.append(line)
            size += len(line)
        flush()
        if reply is None:
            raise ValueError("push: no records")
        return {**reply, "accepted": accepted}

    def complete(self, token: str, deployment: str, status: str, exit_code: int | None = None) -> dict:
        body = {"status": status}
        if exit_code is not None:
            body["exit_code"] = exit_code
        path = f"/v1/deployments/{urllib.parse.quote(deployment, safe='')}/complete"
        code, _, reply = self.request("POST", path, token, json.dumps(body).encode(),
                                      {"Content-Type": "application/json"})
        if code != 200:
            raise ApiError(code, reply, f"POST {path}")
        return json.loads(reply) if reply.strip() else {}

    # --- MCP clients ---

    @contextlib.asynccontextmanager
    async def session(self, transport: str, token: str | None, *, inbox: Inbox | None = None,
                      headers: dict | None = None, env: dict | None = None, args: list[str] | None = None):
        """An initialized `ClientSession` of the Python MCP SDK:
        "http"  streamable HTTP to `/mcp` with `Authorization: Bearer token` (+ `headers`);
        "stdio" `kubectl-logstream --server URL --token TOKEN mcp` (or `args`, `env`).
        `s.server` is the InitializeResult, `s.inbox` what arrived unasked. Leaving the
        block closes the session (HTTP DELETE; stdin closed for stdio)."""
        inbox = inbox or Inbox()
        async with contextlib.AsyncExitStack() as stack:
            if transport == "http":
                h = dict(headers or {})
                if token:
                    h["Authorization"] = f"Bearer {token}"
                client = await stack.enter_async_context(
                    create_mcp_http_client(headers=h, timeout=httpx.Timeout(30, read=120)))
                read, write, _ = await stack.enter_async_context(
                    streamable_http_client(self.mcp_url, http_client=client))
            elif transport == "stdio":
                if args is None:
                    args = ["--server", self.url, "--token", token, "mcp"]
                params = StdioServerParameters(
                    command=self.cli, args=args,
                    env={"RUST_LOG": "warn", "NO_COLOR": "1", **(env or {})})
                errlog = stack.enter_context(open(self.root / f"stdio-{uuid.uuid4().hex[:8]}.log", "w"))
                read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
            else:
                raise ValueError(f"transport {transport!r}")
            s = await stack.enter_async_context(
                ClientSession(read, write, message_handler=inbox.handler,
                              read_timeout_seconds=timedelta(seconds=90)))
            s.server = await s.initialize()
            s.inbox = inbox
            s.transport = transport
            yield s
            assert not inbox.errors, f"the {transport} transport reported errors: {inbox.errors}"


_running: list[Gateway] = []  # for failure reports


@pytest.fixture(scope="session")
def cli() -> str:
    return _binary("LOGSTREAM_CLI", "kubectl-logstream")


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, cli):
    root = tmp_path_factory.mktemp("gateway")
    gw = Gateway(_binary("LOGSTREAM_GATEWAY", "logstream-gateway"), cli, root)
    gw.start()
    _running.append(gw)
    yield gw
    _running.remove(gw)
    gw.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report gets the end of the gateway's log and of the stderr of the
    last `kubectl-logstream mcp` started."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for gw in _running:
            rep.sections.append(("gateway log (last lines)", gw.log_tail()))
            stdio = sorted(gw.root.glob("stdio-*.log"), key=lambda p: p.stat().st_mtime)
            if stdio and stdio[-1].stat().st_size:
                tail = "\n".join(stdio[-1].read_text(errors="replace").splitlines()[-20:])
                rep.sections.append((f"kubectl-logstream mcp stderr ({stdio[-1].name})", tail))
