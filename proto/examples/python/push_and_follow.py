#!/usr/bin/env python3
"""A logstream gRPC client in Python: push lines in idempotent batches, retry what the
contract says may be retried, complete the deployment, and read it back with
Tail.Subscribe (resuming from the last cursor when the stream breaks).

Generate the stubs first (see proto/README.md) and put them on the path:

    python -m grpc_tools.protoc -I proto/proto --python_out=gen --grpc_python_out=gen logstream.proto
    PYTHONPATH=gen python proto/examples/python/push_and_follow.py \\
        --grpc 127.0.0.1:8081 --token "$TOKEN" --deployment build-42 --lines 300

stdout: the lines read back, one message per line, then one JSON object with the end
(`{"status": ..., "exit_code": ..., "lines": N}`). stderr: what was retried.
Exit code 0, or 2 when the gateway refused for good (the code and message on stderr).
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import sys
import time

import grpc

import logstream_pb2 as pb
import logstream_pb2_grpc as pb_grpc

# The codes a client may retry (logstream_model::retry::RETRYABLE_CODES); every other
# code is final for that request.
RETRYABLE_CODES = {
    "quota_exceeded", "unavailable", "storage_unavailable", "audit_unavailable",
    "shutting_down", "internal", "kafka_unavailable", "kafka_unreachable", "not_owner",
    "moved", "not_applied_yet", "object_store_unavailable", "store_unreachable",
}


class Refused(Exception):
    """A final refusal: the contract code and the gateway's message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


def backoff(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    """base * 2^attempt, capped, with up to half taken off at random (as the Rust
    clients do: logstream_model::retry::backoff)."""
    delay = min(cap, base * (2 ** attempt))
    return delay - (delay / 2) * random.random()


def status_code(err: grpc.RpcError) -> str:
    """The contract code of a refused call: the `logstream-error-code` metadata, else
    the prefix of the `"{code}: {message}"` status message; "unavailable" for a broken
    connection (no code of the gateway's)."""
    for key, value in (err.trailing_metadata() or ()):
        if key == "logstream-error-code":
            return value
    details = err.details() or ""
    if ": " in details and details.split(": ", 1)[0].replace("_", "").isalnum():
        return details.split(": ", 1)[0]
    return "unavailable" if err.code() == grpc.StatusCode.UNAVAILABLE else err.code().name.lower()


def retry_after(err: grpc.RpcError) -> float:
    for key, value in (err.trailing_metadata() or ()):
        if key == "retry-after":
            return float(value)
    return 0.0


class Pusher:
    """One Ingest.Push stream; sends a batch and waits for its ack. A broken stream is
    opened again (the batch is sent again with the same id: stored once)."""

    def __init__(self, stub: pb_grpc.IngestStub, metadata):
        self.stub, self.metadata = stub, metadata
        self.requests: queue.Queue | None = None
        self.acks = None

    def _open(self):
        self.requests = queue.Queue()
        requests = self.requests

        def outgoing():
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item

        self.acks = self.stub.Push(outgoing(), metadata=self.metadata)

    def close(self):
        if self.requests is not None:
            self.requests.put(None)
            self.requests = None

    def push(self, batch: pb.PushRequest) -> pb.PushAck:
        """Sends `batch` until it is acknowledged; raises Refused on a final code."""
        attempt = 0
        while True:
            if self.requests is None:
                self._open()
            self.requests.put(batch)
            try:
                ack = next(self.acks)
            except (grpc.RpcError, StopIteration) as e:
                # The stream broke (a restart answers UNAVAILABLE shutting_down): open a
                # new one and send the unacknowledged batch again.
                self.close()
                code = status_code(e) if isinstance(e, grpc.RpcError) else "unavailable"
                if code not in RETRYABLE_CODES:
                    raise Refused(code, e.details() if isinstance(e, grpc.RpcError) else "stream ended")
                wait = max(backoff(attempt), retry_after(e) if isinstance(e, grpc.RpcError) else 0)
                print(f"retrying batch {batch.batch_id} after {code} in {wait:.2f}s", file=sys.stderr)
            else:
                if not ack.HasField("error"):
                    return ack
                code = ack.error.code
                if code not in RETRYABLE_CODES:
                    raise Refused(code, ack.error.message)
                # Not sooner than the gateway says (retry_after_secs, set for quota_exceeded).
                wait = max(backoff(attempt), float(ack.error.retry_after_secs))
                print(f"retrying batch {batch.batch_id} after {code} in {wait:.2f}s", file=sys.stderr)
            time.sleep(wait)
            attempt += 1


def complete(stub: pb_grpc.IngestStub, metadata, deployment: str, status: str, exit_code: int):
    attempt = 0
    while True:
        try:
            return stub.Complete(
                pb.CompleteRequest(deployment=deployment, status=status, exit_code=exit_code),
                metadata=metadata, timeout=30)
        except grpc.RpcError as e:
            code = status_code(e)
            if code not in RETRYABLE_CODES or attempt >= 10:
                raise Refused(code, e.details() or "")
            time.sleep(max(backoff(attempt), retry_after(e)))
            attempt += 1


def follow(stub: pb_grpc.TailStub, metadata, deployment: str):
    """Yields every line of the deployment once, in order, then its End; a broken
    stream is subscribed again after the last cursor received."""
    cursor, attempt = "", 0
    while True:
        try:
            for event in stub.Subscribe(pb.SubscribeRequest(deployment=deployment, cursor=cursor),
                                        metadata=metadata):
                kind = event.WhichOneof("event")
                if kind == "lines":
                    for stored in event.lines.lines:
                        cursor, attempt = stored.cursor, 0
                        yield stored
                elif kind == "end":
                    yield event.end
                    return
            # Ended without End: subscribe again from the cursor.
        except grpc.RpcError as e:
            code = status_code(e)
            if code not in RETRYABLE_CODES:
                raise Refused(code, e.details() or "")
        time.sleep(backoff(attempt, base=0.2, cap=10.0))
        attempt += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grpc", required=True, help="the gateway's gRPC address, host:port")
    ap.add_argument("--token", required=True, help="a bearer token with logs:write and logs:read")
    ap.add_argument("--deployment", required=True)
    ap.add_argument("--step", default="build")
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--batch", type=int, default=100, help="lines per batch")
    ap.add_argument("--source", default=None, help="the producer's name (batch ids count per source)")
    ap.add_argument("--no-complete", action="store_true",
                    help="push only: leave the deployment running (a later step completes it)")
    args = ap.parse_args()

    metadata = (("authorization", f"Bearer {args.token}"),)
    source = args.source or f"example/{random.getrandbits(32):08x}"
    with grpc.insecure_channel(args.grpc) as channel:
        ingest, tail = pb_grpc.IngestStub(channel), pb_grpc.TailStub(channel)
        pusher = Pusher(ingest, metadata)
        try:
            messages = [f"{args.step} line {i}" for i in range(args.lines)]
            for batch_id, start in enumerate(range(0, len(messages), args.batch), start=1):
                lines = [pb.Line(step=args.step, stream=pb.STREAM_STDOUT, message=m)
                         for m in messages[start:start + args.batch]]
                ack = pusher.push(pb.PushRequest(deployment=args.deployment, source=source,
                                                 batch_id=batch_id, lines=lines))
                print(f"batch {batch_id}: accepted {ack.accepted}, last seq {ack.last_seq}"
                      + (" (duplicate)" if ack.duplicate else ""), file=sys.stderr)
            pusher.close()
            if args.no_complete:
                return 0
            complete(ingest, metadata, args.deployment, "succeeded", 0)
            n = 0
            for item in follow(tail, metadata, args.deployment):
                if isinstance(item, pb.StoredLine):
                    n += 1
                    print(item.line.message)
                else:
                    print(json.dumps({"status": item.status, "exit_code": item.exit_code, "lines": n}))
        except Refused as e:
            print(f"refused: {e}", file=sys.stderr)
            return 2
        finally:
            pusher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
