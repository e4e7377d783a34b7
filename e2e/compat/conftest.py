"""Fixtures of the ingest-compatibility suite (e2e/compat): one real gateway process and
the real clients' environment.

    gateway   (session)  `logstream-gateway serve` ($LOGSTREAM_GATEWAY)
    node_dir  (session)  a node_modules prefix holding winston and winston-loki
                         ($LOGSTREAM_LOKI_CLIENT, installed by ./e2e/test into
                         ~/.cache/logstream/loki-client); skips without Node
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # e2e/
from gateway_proc import Gateway, debug_binary  # noqa: E402


@pytest.fixture(scope="session")
def gateway():
    binary = debug_binary("LOGSTREAM_GATEWAY", "logstream-gateway")
    assert os.access(binary, os.X_OK), f"{binary}: build it with `cargo build -p logstream-gateway`"
    gw = Gateway(binary, temp_prefix="ls-compat-")
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def node_dir() -> Path:
    if not shutil.which("node"):
        pytest.skip("Node.js is not installed: winston-loki runs on node")
    d = os.environ.get("LOGSTREAM_LOKI_CLIENT") or os.path.expanduser("~/.cache/logstream/loki-client")
    d = Path(d)
    assert (d / "node_modules" / "winston-loki").is_dir(), f"{d}: install winston and winston-loki there (./e2e/test does)"
    return d


def read_all(gw: Gateway, token: str, deployment: str) -> list[dict]:
    """Every stored line of `deployment`, in order."""
    out, cursor = [], ""
    while True:
        page = gw.get_json(f"/v1/deployments/{deployment}/logs?limit=5000&cursor={cursor}", token)
        out += page["lines"]
        cursor = page.get("next_cursor") or ""
        if not page["lines"] or page.get("complete"):
            return out
