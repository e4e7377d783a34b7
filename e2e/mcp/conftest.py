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
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # e2e/
import gateway_proc  # noqa: E402
from gateway_proc import debug_binary, unique  # noqa: E402

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


def _binary(env: str, name: str) -> str:
    b = debug_binary(env, name)
    if not os.access(b, os.X_OK):
        pytest.exit(f"no {name} binary at {b}: build it (./e2e/test does) or set {env}", 2)
    return b


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


class Gateway(gateway_proc.Gateway):
    """A running `logstream-gateway serve` with its own data dir, config and ports
    (e2e/gateway_proc.py's process: urllib request/get_json/push/complete; a push makes
    as many requests as the 4 MiB body limit needs), started with `--config` (CONFIG);
    plus tenants and MCP clients."""

    def __init__(self, binary: str, cli: str, root: Path):
        self.root = root
        self.config = root / "gateway.toml"
        super().__init__(binary, root / "data", root / "gateway.log",
                         args=["--config", str(self.config)], request_timeout=60.0)
        self.cli = cli
        self.mcp_url = self.url + "/mcp"
        self.limits = dict(MCP_LIMITS)

    # --- process ---

    def start(self, timeout: float = 60.0) -> None:
        self.config.write_text(CONFIG)
        super().start(timeout)

    # --- tokens and tenants ---

    def token(self, tenant: str, scopes: str = "logs:read,logs:write", subject: str | None = None) -> str:
        """`logstream-gateway token`, signed with this gateway's dev key; a subject of its
        own unless `subject` is given."""
        return super().token(tenant, scopes, subject=subject or unique("mcp-e2e"))

    def tenant(self, prefix: str = "t") -> Tenant:
        return Tenant(self, unique(prefix))

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
