"""Fixtures of the alerts suite: a real Alertmanager (Debian `prometheus-alertmanager`)
routing to a webhook receiver run here, and a real gateway whose `tenant_alerts` rules
send to that Alertmanager.

    hook          (session)  an HTTP server recording every POST: hook.wait(pred, n)
    alertmanager  (session)  the Alertmanager process ($LOGSTREAM_ALERTMANAGER or
                             /usr/bin/prometheus-alertmanager): group_wait 1s,
                             group_interval 1s, repeat_interval 1h, resolved sent
    gateway       (session)  `logstream-gateway serve --config` ($LOGSTREAM_GATEWAY) with
                             the rules of RULES for tenants `TENANT_A` and `TENANT_B`
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # e2e/
import gateway_proc  # noqa: E402
from gateway_proc import debug_binary, free_port  # noqa: E402

TENANT_A = "alerts-a"
TENANT_B = "alerts-b"


class Hook:
    """Records the JSON bodies POSTed to it; `wait` blocks until enough match."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n) or b"null")
                with hook.cond:
                    hook.bodies.append(body)
                    hook.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, pred, n: int = 1, timeout: float = 60.0) -> list[dict]:
        """The first `n` recorded bodies `pred` accepts, once there are that many."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [b for b in self.bodies if pred(b)]
                if len(got) >= n:
                    return got[:n]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(got)} of {n} notifications after {timeout} s: {self.bodies}")
                self.cond.wait(left)

    def matching(self, pred) -> list[dict]:
        with self.cond:
            return [b for b in self.bodies if pred(b)]


@pytest.fixture(scope="session")
def hook():
    h = Hook()
    yield h
    h.server.shutdown()


def _alertmanager_binary() -> str:
    b = os.environ.get("LOGSTREAM_ALERTMANAGER") or shutil.which("prometheus-alertmanager") \
        or "/usr/bin/prometheus-alertmanager"
    if not os.access(b, os.X_OK):
        pytest.exit(f"no Alertmanager at {b}: install Debian's prometheus-alertmanager (./e2e/test does)", 2)
    return b


class Alertmanager:
    def __init__(self, hook: Hook):
        self.dir = Path(tempfile.mkdtemp(prefix="ls-am-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "am.yml").write_text(
            "route:\n"
            "  receiver: hook\n"
            "  group_by: [alertname, tenant, deployment]\n"
            "  group_wait: 1s\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: hook\n"
            "    webhook_configs:\n"
            f"      - url: {hook.url}\n"
            "        send_resolved: true\n"
        )
        self.log = open(self.dir / "am.log", "wb")
        self.proc = subprocess.Popen(
            [
                _alertmanager_binary(),
                f"--config.file={self.dir / 'am.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Alertmanager exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Alertmanager not ready in 60 s:\n{self.log_tail()}")
            time.sleep(0.05)

    def alerts(self) -> list[dict]:
        """Alertmanager's active alerts (`GET /api/v2/alerts`)."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts?active=true", timeout=10) as r:
            return json.loads(r.read())

    def log_tail(self) -> str:
        try:
            return "\n".join((self.dir / "am.log").read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def alertmanager(hook):
    am = Alertmanager(hook)
    yield am
    am.stop()


def rules(am_url: str) -> str:
    """Both tenants get the same rules, each sending to the Alertmanager."""
    out = ["[alerting]", 'evaluation_interval = "200ms"', 'resend_interval = "2s"', ""]
    for tenant in (TENANT_A, TENANT_B):
        out += [
            f"[[tenant_alerts.{tenant}.receivers]]",
            'name = "am"',
            f'alertmanager = {{ url = "{am_url}" }}',
            "",
            f"[[tenant_alerts.{tenant}.rules]]",
            'name = "FatalInBuild"',
            'selector = { deployment = "build-*" }',
            'match = { regex = "FATAL|panicked at" }',
            'condition = { matches = { count = 2, window = "4s" } }',
            'for = "2s"',
            'repeatInterval = "1h"',
            'labels = { severity = "page" }',
            'annotations = { summary = "{{ $value }} fatal lines in {{ $labels.deployment }}", first = "{{ $line }}" }',
            "",
        ]
    return "\n".join(out)


@pytest.fixture(scope="session")
def gateway(alertmanager, tmp_path_factory):
    binary = debug_binary("LOGSTREAM_GATEWAY", "logstream-gateway")
    if not os.access(binary, os.X_OK):
        pytest.exit(f"no logstream-gateway binary at {binary}: build it (./e2e/test does) or set LOGSTREAM_GATEWAY", 2)
    d = tmp_path_factory.mktemp("gateway")
    config = d / "gateway.toml"
    config.write_text(rules(alertmanager.url))
    gw = gateway_proc.Gateway(binary, d / "data", d / "gateway.log", args=["--config", str(config)])
    gw.start()
    yield gw
    gw.stop()
