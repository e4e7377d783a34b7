"""The gRPC protocol from another language: the Python example client
(proto/examples/python/push_and_follow.py) against a real `logstream-gateway serve`, with
stubs generated from proto/proto/logstream.proto by grpcio-tools, as proto/README.md
says. What it stored is checked through the HTTP API.

    LOGSTREAM_GATEWAY   the gateway binary (default: Cargo's debug target dir)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # e2e/
from gateway_proc import Gateway, debug_binary, unique  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "proto" / "examples" / "python" / "push_and_follow.py"
# 100 lines a second per tenant: a batch of 150 puts the tenant in debt, so the next
# batch is refused with the retryable `quota_exceeded` before it is accepted.
CONFIG = "[quotas]\ningest_lines_per_sec = 100\n"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto" / "proto"),
         f"--python_out={out}", f"--grpc_python_out={out}", "logstream.proto"],
        check=True, timeout=120,
    )
    assert (out / "logstream_pb2_grpc.py").exists()
    return out


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    binary = debug_binary("LOGSTREAM_GATEWAY", "logstream-gateway")
    if not os.path.exists(binary):
        pytest.fail(f"{binary} missing: cargo build -p logstream-gateway")
    d = tmp_path_factory.mktemp("gateway")
    (d / "gateway.toml").write_text(CONFIG)
    gw = Gateway(binary, log_path=d / "gateway.log", args=["--config", str(d / "gateway.toml")])
    gw.start()
    yield gw
    gw.stop()


def run_example(stubs: Path, gw: Gateway, token: str, deployment: str, *extra: str):
    env = {**os.environ, "PYTHONPATH": str(stubs)}
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--grpc", f"127.0.0.1:{gw.grpc_port}", "--token", token,
         "--deployment", deployment, *extra],
        env=env, capture_output=True, text=True, timeout=120,
    )


def stored(gw: Gateway, token: str, deployment: str) -> list[dict]:
    lines, cursor = [], ""
    while True:
        page = gw.get_json(f"/v1/deployments/{deployment}/logs?limit=5000&cursor={cursor}", token)
        lines += page["lines"]
        cursor = page["next_cursor"]
        if not page["lines"] or page["complete"]:
            return lines


def test_the_example_pushes_retries_a_quota_refusal_completes_and_reads_back(stubs, gateway):
    token = gateway.token(unique("py"), "logs:read,logs:write")
    dep = unique("grpc-py")
    r = run_example(stubs, gateway, token, dep, "--lines", "300", "--batch", "150")
    assert r.returncode == 0, r.stderr
    # The second batch was refused for the quota and sent again with its id.
    assert "retrying batch 2 after quota_exceeded" in r.stderr, r.stderr
    want = [f"build line {i}" for i in range(300)]
    out = r.stdout.splitlines()
    assert out[:-1] == want
    assert json.loads(out[-1]) == {"status": "succeeded", "exit_code": 0, "lines": 300}
    # Stored once each, in order, through the HTTP API.
    lines = stored(gateway, token, dep)
    assert [l["message"] for l in lines] == want
    assert [l["seq"] for l in lines] == list(range(1, 301))
    assert {l["step"] for l in lines} == {"build"}
    d = gateway.get_json(f"/v1/deployments/{dep}", token)
    assert (d["status"], d["exit_code"]) == ("succeeded", 0)


def test_a_resent_batch_is_stored_once_and_a_final_refusal_is_not_retried(stubs, gateway):
    token = gateway.token(unique("py"), "logs:read,logs:write")
    dep = unique("grpc-py")
    r = run_example(stubs, gateway, token, dep, "--lines", "50", "--batch", "10",
                    "--source", "ci/runner-1", "--no-complete")
    assert r.returncode == 0, r.stderr
    assert "duplicate" not in r.stderr, r.stderr
    # The same producer sends the same batches again (as after a crash): each is
    # acknowledged as a duplicate and stored once.
    r = run_example(stubs, gateway, token, dep, "--lines", "50", "--batch", "10",
                    "--source", "ci/runner-1")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("(duplicate)") == 5, r.stderr
    assert r.stdout.splitlines()[:-1] == [f"build line {i}" for i in range(50)]
    assert len(stored(gateway, token, dep)) == 50
    # The deployment has completed: a final code, not retried; the example exits 2.
    r = run_example(stubs, gateway, token, dep, "--lines", "5", "--source", "ci/runner-2")
    assert r.returncode == 2, r.stderr
    assert "refused: deployment_completed" in r.stderr, r.stderr
    assert "retrying" not in r.stderr, r.stderr
    assert len(stored(gateway, token, dep)) == 50
