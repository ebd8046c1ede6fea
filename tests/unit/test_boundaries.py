"""Boundaries of the front door, as plain logic: the body limit (an ASGI middleware), the Redis
breaker, the admin token's throttle, and job records whose pid was reused."""

from __future__ import annotations

import asyncio
import os
import socket

from pipelines.breaker import Breaker
from pipelines.indexing.jobs import Job, judged, process_started
from services._common import AdminThrottle, admin_refusal
from services.body_limit import BodyLimit


def call(app, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, bytes, bytes]:
    """(status, body, what the app behind read) for a POST of ``chunks``."""
    read = bytearray()

    async def inner(scope, receive, send):
        while True:
            message = await receive()
            read.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
    asyncio.run(BodyLimit(inner, lambda p: 1000 if p.startswith("/ingest/") else 100)(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), bytes(read)


def test_a_body_over_the_limit_is_a_413_whether_declared_chunked_or_understated():
    assert call(None, "/rag_query", [b"x" * 50], [(b"content-length", b"500")])[0] == 413  # declared: not read
    status, body, read = call(None, "/rag_query", [b"x" * 60, b"x" * 60])  # chunked, no length
    assert status == 413 and read == b"" and b'"field": "body"' in body  # the app never saw a byte
    status, _, read = call(None, "/rag_query", [b"x" * 60, b"x" * 60], [(b"content-length", b"10")])
    assert status == 413 and read == b""  # a length that lies is no way past it
    status, body, _ = call(None, "/v1/chat/completions", [b"x" * 101])
    assert status == 413 and b"request_too_large" in body  # OpenAI's error shape under /v1
    status, _, read = call(None, "/rag_query", [b"x" * 40, b"y" * 40])
    assert status == 200 and read == b"x" * 40 + b"y" * 40  # within the limit: handed on whole
    assert call(None, "/ingest/x", [b"x" * 500])[0] == 200  # its own (larger) limit


def test_the_breaker_lets_one_probe_through_per_retry_period():
    now = [0.0]
    b = Breaker(retry_s=2.0, clock=lambda: now[0])
    assert b.allow()
    b.failed("lookup", TimeoutError())
    assert b.down and not b.allow()  # open: refused at once
    now[0] = 2.5
    assert b.allow() and not b.allow()  # half-open: one probe, the others still refused
    b.failed("lookup", TimeoutError())
    assert not b.allow()
    now[0] = 5.0
    assert b.allow()
    b.succeeded()
    assert not b.down and b.allow() and b.allow()


def test_wrong_admin_tokens_are_throttled_and_a_missing_one_guesses_nothing():
    now = [0.0]
    throttle = AdminThrottle(limit=3, window_s=60, clock=lambda: now[0])
    token = "a-strong-admin-token-123"
    assert admin_refusal(token, None, throttle)[0] == 401 and throttle.wait_s() == 0  # no header: no guess
    assert [admin_refusal(token, f"Bearer guess{i}", throttle)[0] for i in range(3)] == [401] * 3
    status, message = admin_refusal(token, f"Bearer {token}", throttle)
    assert status == 429 and "retry in 60 s" in message
    now[0] = 61
    assert admin_refusal(token, f"Bearer {token}", throttle) is None


def test_a_job_whose_pid_now_belongs_to_another_process_reads_failed():
    mine = Job(id="0" * 16, collection="c", kind="upsert", status="running", host=socket.gethostname())
    assert mine.pid == os.getpid() and mine.pid_started == process_started(os.getpid())
    assert judged(mine.model_copy()).status == "running"
    reused = mine.model_copy(update={"pid_started": "1"})  # same pid, another process's start time
    assert judged(reused).status == "failed" and "exited" in judged(reused).error
    old_record = mine.model_copy(update={"pid_started": None})  # written before start times were kept
    assert judged(old_record).status == "running"
