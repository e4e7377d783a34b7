"""The OpenTelemetry Python SDK and its OTLP log exporters (HTTP protobuf, HTTP JSON,
gRPC) against a real gateway: Python `logging` through the SDK's LoggingHandler, lines
stored once, in order, with step, level and metadata, secrets redacted; a record without
a deployment refused in the partial success while the rest is stored."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from conftest import read_all

SECRET = "ghp_" + "Zx9" * 12  # a GitHub token's shape: ghp_ + 36 characters


def exporter(kind: str, gw, token: str):
    if kind == "http-protobuf":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http import Compression
        return OTLPLogExporter(endpoint=f"{gw.url}/v1/logs", headers={"Authorization": f"Bearer {token}"},
                               compression=Compression.Gzip)
    if kind == "http-json":
        from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter
        return OTLPLogExporter(endpoint=f"{gw.url}/v1/logs", headers={"Authorization": f"Bearer {token}"})
    if kind == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        return OTLPLogExporter(endpoint=f"http://127.0.0.1:{gw.grpc_port}", insecure=True,
                               headers=(("authorization", f"Bearer {token}"),))
    raise ValueError(kind)


def emit(kind: str, gw, token: str, resource: dict, records: list[tuple[int, str, dict]]) -> None:
    """Logs `records` (level, message, extra attributes) through a fresh provider, then
    flushes and shuts it down (every batch exported)."""
    provider = LoggerProvider(resource=Resource.create(resource))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter(kind, gw, token), max_export_batch_size=64))
    log = logging.getLogger(f"compat.{kind}.{uuid.uuid4().hex[:6]}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    log.addHandler(handler)
    try:
        for level, message, extra in records:
            log.log(level, message, extra=extra)
        assert provider.force_flush(30_000), "the exporter did not flush"
    finally:
        log.removeHandler(handler)
        provider.shutdown()


@pytest.mark.parametrize("kind", ["http-protobuf", "http-json", "grpc"])
def test_sdk_lines_arrive_once_in_order_redacted(gateway, kind):
    token = gateway.token("otel")
    dep = f"otel-{kind}-{uuid.uuid4().hex[:8]}"
    records = [(logging.INFO, f"line {i}", {"logstream.step": "build"}) for i in range(150)]
    records[40] = (logging.WARNING, f"pushing with token {SECRET}", {"logstream.step": "build"})
    records[41] = (logging.ERROR, "upload failed", {"logstream.step": "deploy", "api_key": SECRET, "attempt": 2})
    emit(kind, gateway, token, {"logstream.deployment": dep, "service.name": "ci-job"}, records)

    lines = read_all(gateway, token, dep)
    assert len(lines) == len(records), "every record once"
    assert [l["seq"] for l in lines] == list(range(1, len(records) + 1))
    assert [l["message"] for l in lines[:3]] == ["line 0", "line 1", "line 2"]
    assert lines[149]["message"] == "line 149"
    assert SECRET not in json.dumps(lines), "no secret stored, in a message or an attribute"
    assert lines[40]["message"].startswith("pushing with token ghp_*")
    assert lines[40]["level"] == "warn"
    assert (lines[41]["level"], lines[41]["step"]) == ("error", "deploy")
    meta = lines[41]["metadata"]
    assert meta["service.name"] == "ci-job" and meta["attempt"] == "2"
    assert meta["api_key"].startswith("ghp_*")
    assert lines[0]["step"] == "build" and lines[0]["level"] == "info"
    assert "logstream.deployment" not in lines[0].get("metadata", {})


@pytest.mark.parametrize("kind", ["http-protobuf", "grpc"])
def test_ci_conventions_name_the_deployment_and_records_without_one_are_refused(gateway, kind):
    token = gateway.token("otel")
    run_id = f"run-{kind}-{uuid.uuid4().hex[:8]}"
    other = f"other-{uuid.uuid4().hex[:8]}"
    records = [
        (logging.INFO, "no deployment anywhere", {}),
        (logging.INFO, "checkout", {"cicd.pipeline.run.id": run_id, "cicd.pipeline.task.name": "checkout"}),
        (logging.INFO, "elsewhere", {"logstream.deployment": other}),
        (logging.INFO, "test", {"cicd.pipeline.run.id": run_id, "cicd.pipeline.task.name": "test"}),
    ]
    emit(kind, gateway, token, {"service.name": "runner"}, records)
    lines = read_all(gateway, token, run_id)
    assert [(l["step"], l["message"]) for l in lines] == [("checkout", "checkout"), ("test", "test")]
    assert [l["message"] for l in read_all(gateway, token, other)] == ["elsewhere"]
