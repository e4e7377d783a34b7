"""Export links with curl, as people share them: no token, a download cut short and
resumed with `curl -C -` is byte-identical, and revalidation with the saved ETag
(`--etag-save` / `--etag-compare`) is 304."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from conftest import read_all


@pytest.fixture(scope="module")
def curl() -> str:
    c = shutil.which("curl")
    if not c:
        pytest.skip("curl is not installed")
    return c


def test_curl_resumes_a_link_download_byte_identical_and_revalidates(gateway, curl, tmp_path):
    token = gateway.token("links", scopes="logs:read,logs:write,logs:export")
    dep = f"share-{uuid.uuid4().hex[:8]}"
    gateway.push(token, dep, [{"message": f"step {i} " + "x" * (i % 50), "step": "build"} for i in range(5000)])
    gateway.complete(token, dep, "succeeded", 0)
    assert len(read_all(gateway, token, dep)) == 5000
    status, _, body = gateway.request("POST", f"/v1/deployments/{dep}/export-links", token,
                                      json.dumps({"format": "csv", "expires_in": "10m"}).encode(),
                                      {"Content-Type": "application/json"})
    assert status == 201, body
    url = json.loads(body)["url"]

    full = tmp_path / "full.csv"
    subprocess.run([curl, "-sSf", "-o", str(full), url], check=True)
    whole = full.read_bytes()
    assert whole.startswith(b"seq,") and whole.count(b"\n") == 5001

    # A download cut short (the first 10,000 bytes), then resumed where the file ends.
    part = tmp_path / "part.csv"
    subprocess.run([curl, "-sSf", "-r", "0-9999", "-o", str(part), url], check=True)
    assert part.stat().st_size == 10_000
    out = subprocess.run([curl, "-sSf", "-C", "-", "-o", str(part), "-w", "%{http_code}", url],
                         check=True, capture_output=True, text=True)
    assert out.stdout == "206"
    assert part.read_bytes() == whole

    # Revalidation with the ETag curl saved: 304, nothing sent again.
    etag = tmp_path / "etag"
    subprocess.run([curl, "-sSf", "--etag-save", str(etag), "-o", "/dev/null", url], check=True)
    assert etag.read_text().strip().startswith('"')
    out = subprocess.run([curl, "-sS", "--etag-compare", str(etag), "-o", "/dev/null", "-w", "%{http_code}", url],
                         check=True, capture_output=True, text=True)
    assert out.stdout == "304"

    # The link altered: 403 with the JSON error.
    out = subprocess.run([curl, "-sS", "-w", "\n%{http_code}", url.replace("format=csv", "format=text")],
                         check=True, capture_output=True, text=True)
    body, code = out.stdout.rsplit("\n", 1)
    assert code == "403" and json.loads(body)["error"]["code"] == "invalid_signature"
