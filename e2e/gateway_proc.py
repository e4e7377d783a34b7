"""A real `logstream-gateway serve` process, shared by the web UI and MCP suites (e2e/ui,
e2e/mcp) and the benchmark scripts (e2e/bench): loopback ports of its own, start-up
awaited on /healthz, tokens from `logstream-gateway token`, and HTTP through the
standard library only (urllib), so what is sent is exactly what the API documents.

Plain standard library. The suites and scripts import it with e2e/ on sys.path:

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # e2e/
    from gateway_proc import Gateway
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

# One ingest request stays well under the gateway's `max_body_bytes` (64 MiB by
# default; there is no per-batch line limit), and small enough that a request in
# flight does not hold the gateway up for the tests running beside it.
PUSH_MAX_BYTES = 4 << 20


def unique(prefix: str) -> str:
    """A deployment id, tenant or subject no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def debug_binary(env: str, name: str) -> str:
    """The path in $`env` when set, else `name` in Cargo's debug target dir
    ($CARGO_TARGET_DIR, by default ~/.cache/logstream/target). Not checked here: the
    caller says how to build it."""
    b = os.environ.get(env)
    if not b:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/logstream/target"))
        b = os.path.join(target, "debug", name)
    return b


class ApiError(Exception):
    def __init__(self, status: int, body: bytes, what: str):
        self.status = status
        self.body = body
        super().__init__(f"{what}: HTTP {status}: {body[:500]!r}")


class Gateway:
    """A running `logstream-gateway serve` with its own data dir and loopback ports.

    binary           the `logstream-gateway` binary
    data_dir         its data dir (the gateway creates it); None: a temporary directory
                     (named `temp_prefix`...), removed by stop()
    log_path         where the process's stdout and stderr go; None: discarded
    args             more `serve` arguments, put before the others (e.g. `--config FILE`)
    request_timeout  seconds, for `request` and what uses it (get_json, push, complete)
    push_max_bytes,  the limits of one `push` request (None: no limit); a push makes as
    push_max_lines   many requests as they need
    rust_log         the process's RUST_LOG unless the environment sets one; None: the
                     environment as it is
    """

    def __init__(self, binary: str, data_dir: Path | None = None, log_path: Path | None = None, *,
                 args: list[str] | tuple[str, ...] = (), request_timeout: float = 120.0,
                 push_max_bytes: int | None = PUSH_MAX_BYTES, push_max_lines: int | None = None,
                 rust_log: str | None = "warn", temp_prefix: str = "ls-gateway-"):
        self.binary = binary
        self._temp = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix=temp_prefix)) if data_dir is None else data_dir
        self.log_path = log_path
        self.args = list(args)
        self.request_timeout = request_timeout
        self.push_max_bytes = push_max_bytes
        self.push_max_lines = push_max_lines
        self.rust_log = rust_log
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    # --- process ---

    def start(self, timeout: float = 60.0) -> None:
        self._log = open(self.log_path, "wb") if self.log_path else None
        env = None
        if self.rust_log is not None:
            env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", self.rust_log)}
        self.proc = subprocess.Popen(
            [
                self.binary,
                "serve",
                *self.args,
                "--listen", f"127.0.0.1:{self.http_port}",
                "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
                "--data-dir", str(self.data_dir),
            ],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        # Process start-up is the one thing polled: nothing announces readiness otherwise.
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the gateway exited with {self.proc.returncode} at start:\n{self.log_tail()}"
                )
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

    def stop(self, kill: bool = False) -> None:
        """Stops the process: SIGTERM, then SIGKILL after 15 s (`kill`: SIGKILL at once).
        Removes the data dir when it is a temporary one of its own."""
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
                self.proc.wait()
            else:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=15)
        if self._log:
            self._log.close()
        if self._temp:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None:
            return "(no gateway log)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no gateway log)"

    # --- tokens ---

    def token(self, tenant: str, scopes: str = "logs:read,logs:write", subject: str | None = None,
              ttl: str | None = None) -> str:
        """`logstream-gateway token`, signed with this gateway's dev key."""
        cmd = [self.binary, "token", "--data-dir", str(self.data_dir), "--tenant", tenant, "--scopes", scopes]
        if subject:
            cmd += ["--subject", subject]
        if ttl:
            cmd += ["--ttl", ttl]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    # --- HTTP (urllib only) ---

    def request(self, method: str, path: str, token: str | None = None, body: bytes | None = None,
                headers: dict | None = None, timeout: float | None = None):
        """(status, headers, body) of one request; errors are returned, not raised.
        `timeout` defaults to the gateway's `request_timeout`."""
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout if timeout is None else timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def get_json(self, path: str, token: str):
        status, _, body = self.request("GET", path, token)
        if status != 200:
            raise ApiError(status, body, f"GET {path}")
        return json.loads(body)

    def push_ndjson(self, token: str, deployment: str, body: bytes) -> dict:
        """One ingest request of ready-made NDJSON; the reply once it is durable."""
        path = f"/v1/deployments/{urllib.parse.quote(deployment, safe='')}/logs"
        status, _, reply = self.request(
            "POST", path, token, body, {"Content-Type": "application/x-ndjson"})
        if status != 200:
            raise ApiError(status, reply, f"POST {path}")
        return json.loads(reply)

    def push(self, token: str, deployment: str, records) -> dict:
        """Ingests `records` (dicts with ts, step, stream, level, message; all but message
        optional; a plain str is a message) as NDJSON, in as many requests as the limits
        (push_max_bytes, push_max_lines) need. Returns the last reply with `accepted`
        summed over the requests."""
        accepted, reply = 0, None
        chunk: list[bytes] = []
        size = 0
        max_bytes, max_lines = self.push_max_bytes, self.push_max_lines

        def flush():
            nonlocal accepted, reply, chunk, size
            if chunk:
                reply = self.push_ndjson(token, deployment, b"".join(chunk))
                accepted += reply["accepted"]
                chunk, size = [], 0

        for rec in records:
            if isinstance(rec, str):
                rec = {"message": rec}
            line = json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            if chunk and ((max_bytes is not None and size + len(line) > max_bytes)
                          or (max_lines is not None and len(chunk) >= max_lines)):
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
        code, _, reply = self.request(
            "POST", path, token, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if code != 200:
            raise ApiError(code, reply, f"POST {path}")
        return json.loads(reply) if reply.strip() else {}


def start_for_bench(binary: str, temp_prefix: str, scopes: str) -> Gateway:
    """A started gateway for a benchmark script (e2e/bench): a temporary data dir, its
    output discarded, RUST_LOG as the environment has it, one request per `push` (no
    chunking), 30 s to answer /healthz, and `gw.bearer`: a token of tenant "bench" with
    `scopes`. The script stops it with `stop(kill=True)`."""
    gw = Gateway(binary, temp_prefix=temp_prefix, rust_log=None, push_max_bytes=None)
    try:
        gw.start(timeout=30)
        gw.bearer = gw.token("bench", scopes)
    except BaseException:
        gw.stop(kill=True)
        raise
    return gw
