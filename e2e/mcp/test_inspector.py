"""The MCP Inspector (the MCP project's reference client, Node) in CLI mode against both
doors: stdio (`kubectl-logstream ... mcp`) and streamable HTTP (`/mcp`).

The inspector comes from $LOGSTREAM_INSPECTOR (its `mcp-inspector` bin, installed by
./e2e/test into ~/.cache/logstream/inspector), else from `npx` with the npm cache in
~/.cache/logstream/npm. Skipped only when Node is not installed.

CLI syntax of inspector 0.21.2 (cli/build/cli.js): `--cli COMMAND ARGS... --method M` for
stdio, `--cli URL --transport http --header "Name: value" --method M` for HTTP. Its own
`--server` option (a server name from `--config`) would swallow the CLI's `--server URL`,
so the command's flags go after `--`; `-e KEY=VALUE` sets the command's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

INSPECTOR = "@modelcontextprotocol/inspector"
INSPECTOR_VERSION = "0.21.2"
TOOLS = {"list_deployments", "get_deployment", "get_logs", "search_logs", "wait_for_completion"}
TEMPLATES = {"logstream://deployments/{id}", "logstream://deployments/{id}/logs"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def inspector() -> list[str]:
    """The command that starts the inspector."""
    if not shutil.which("node"):
        pytest.skip("Node.js is not installed: the MCP Inspector runs on node")
    pinned = os.environ.get("LOGSTREAM_INSPECTOR")
    if pinned:
        bin_ = Path(pinned)
        assert os.access(bin_, os.X_OK), f"LOGSTREAM_INSPECTOR={pinned} is not an executable"
        # node_modules/.bin/mcp-inspector -> ../@modelcontextprotocol/inspector/cli/build/cli.js
        package = json.loads((bin_.resolve().parents[2] / "package.json").read_text())
        assert (package["name"], package["version"]) == (INSPECTOR, INSPECTOR_VERSION), package["version"]
        return [str(bin_)]
    npx = shutil.which("npx")
    if not npx:
        pytest.skip("npx is not installed (and LOGSTREAM_INSPECTOR is not set)")
    return [npx, "--yes", "--prefer-offline", f"{INSPECTOR}@{INSPECTOR_VERSION}"]


def inspect(inspector: list[str], args: list[str], method: str, *extra: str, after: list[str] = ()) -> dict:
    """Runs `inspector --cli ARGS --method METHOD EXTRA [-- AFTER]`; its JSON answer."""
    cmd = [*inspector, "--cli", *args, "--method", method, *extra]
    if after:
        cmd += ["--", *after]
    env = {**os.environ, "npm_config_cache": os.path.expanduser("~/.cache/logstream/npm"),
           "npm_config_update_notifier": "false", "RUST_LOG": "warn", "NO_COLOR": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{' '.join(cmd[:3])}... {method}: exit {p.returncode}\n{p.stderr[-3000:]}"
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"{method}: not JSON: {p.stdout[:1000]!r}\nstderr: {p.stderr[-2000:]}") from e


def test_inspector_over_stdio(gateway, inspector):
    t = gateway.tenant()
    dep = unique("insp")
    t.push(dep, [{"step": "build", "message": "hello from the inspector test"}])
    flags = ["--server", gateway.url, "--token", t.token, "mcp"]

    tools = inspect(inspector, [gateway.cli], "tools/list", after=flags)
    assert {tool["name"] for tool in tools["tools"]} == TOOLS
    assert all(tool.get("outputSchema") for tool in tools["tools"])
    templates = inspect(inspector, [gateway.cli], "resources/templates/list", after=flags)
    assert {rt["uriTemplate"] for rt in templates["resourceTemplates"]} == TEMPLATES
    r = inspect(inspector, [gateway.cli], "tools/call", "--tool-name", "get_deployment",
                "--tool-arg", f"deployment={dep}", after=flags)
    assert not r.get("isError"), r
    assert r["structuredContent"]["id"] == dep and r["structuredContent"]["lines"] == 1

    # Server and token from the environment instead of flags.
    env = ["-e", f"LOGSTREAM_SERVER={gateway.url}", "-e", f"LOGSTREAM_TOKEN={t.token}"]
    tools = inspect(inspector, [*env, gateway.cli, "mcp"], "tools/list")
    assert {tool["name"] for tool in tools["tools"]} == TOOLS


def test_inspector_over_http(gateway, inspector):
    t = gateway.tenant()
    dep = unique("insp")
    t.push(dep, [{"step": "build", "message": "hello from the inspector test"}])

    def http(method: str, *extra: str) -> dict:
        # A token (subject) per run: the inspector does not end its session (no DELETE),
        # and max_sessions_per_token is small here.
        target = [gateway.mcp_url, "--transport", "http", "--header", f"Authorization: Bearer {t.new_token()}"]
        return inspect(inspector, target, method, *extra)

    assert {tool["name"] for tool in http("tools/list")["tools"]} == TOOLS
    templates = http("resources/templates/list")
    assert {rt["uriTemplate"] for rt in templates["resourceTemplates"]} == TEMPLATES
    listed = {r["uri"] for r in http("resources/list")["resources"]}
    assert listed == {f"logstream://deployments/{dep}", f"logstream://deployments/{dep}/logs"}
    r = http("resources/read", "--uri", f"logstream://deployments/{dep}/logs")
    assert "hello from the inspector test" in r["contents"][0]["text"]
    r = http("tools/call", "--tool-name", "get_logs", "--tool-arg", f"deployment={dep}")
    assert not r.get("isError"), r
    assert [line["message"] for line in r["structuredContent"]["lines"]] == ["hello from the inspector test"]
