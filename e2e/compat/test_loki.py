"""winston-loki (npm), a real Loki client, against the gateway's Loki push endpoint: in
protobuf (snappy, when its `snappy` module loads) and in JSON (`json: true`). Lines
arrive once, in order, with the deployment and step from the stream labels, levels from
the `level` label, secrets redacted."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import read_all

CLIENT = Path(__file__).resolve().parent / "loki_client.js"
SECRET = "glpat-" + "aB3dE5gH7jK9mN1pQ3sT"  # a GitLab personal access token's shape


@pytest.mark.parametrize("mode", ["protobuf", "json"])
def test_winston_loki_lines_arrive_once_in_order(gateway, node_dir, mode):
    token = gateway.token("loki")
    dep = f"loki-{mode}-{uuid.uuid4().hex[:8]}"
    n = 120
    out = subprocess.run(
        ["node", str(CLIENT), f"{gateway.url}", token, dep, mode, str(n), SECRET],
        cwd=node_dir, capture_output=True, text=True, timeout=120,
        env={"NODE_PATH": str(node_dir / "node_modules"), "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["contentType"] == ("application/x-protobuf" if mode == "protobuf" else "application/json")
    lines = read_all(gateway, token, dep)
    assert [l["message"] for l in lines if l["step"] == "build"] == [f"compile {i}" for i in range(n)]
    assert len(lines) == n + 2, "every entry once"
    errors = [l for l in lines if l["level"] == "error"]
    assert [l["message"] for l in errors] == ["tests failed"]
    assert errors[0]["step"] == "test"
    assert SECRET not in json.dumps(lines)
    leaked = [l for l in lines if l["message"].startswith("using token")]
    assert len(leaked) == 1 and "glpat-*" in leaked[0]["message"]
    assert lines[0]["metadata"]["job"] == "ci"
