"""The RAG service's calls to its dependencies: a connection the dependency already closed is
retried once for idempotent stages, never for generation."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
import pytest

from common.errors import StageError
from services.remote_stages import RemoteStages


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def __call__(self, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise aiohttp.ClientOSError(32, "Broken pipe")
        return {"ok": True}


def test_a_stale_pooled_connection_is_retried_once():
    stages, method = RemoteStages(svc=None), Flaky(failures=1)
    assert asyncio.run(stages._call("retrieve", method, n=3)) == {"ok": True} and method.calls == 2


def test_a_dependency_that_stays_unreachable_fails_the_stage():
    stages, method = RemoteStages(svc=None), Flaky(failures=5)
    with pytest.raises(StageError, match="retrieve stage failed: the service did not answer") as info:
        asyncio.run(stages._call("retrieve", method))
    assert "ClientOSError" in info.value.detail and "ClientOSError" not in str(info.value)
    assert method.calls == 2


def test_generation_is_never_retried():
    """Through the real call site: a generation is not idempotent (it costs tokens), so a stale
    connection fails it instead of asking the engine twice."""
    method = Flaky(failures=1)
    svc = SimpleNamespace(generation=SimpleNamespace(to_async=SimpleNamespace(generate=method)))
    with pytest.raises(StageError, match="generate\\[large\\] stage failed"):
        asyncio.run(RemoteStages(svc=svc).generate("large", "q", [], 1000.0))
    assert method.calls == 1


def test_a_dependency_s_own_stage_failure_keeps_its_message_and_anything_else_is_generic():
    from http import HTTPStatus

    from bentoml.exceptions import BentoMLException

    class Failing:
        def __init__(self, exc):
            self.exc = exc

        async def __call__(self, **kwargs):
            raise self.exc

    ours = BentoMLException('{"error": "retrieve stage failed: Milvus search failed"}',
                            error_code=HTTPStatus.FAILED_DEPENDENCY)  # services/_common.py: to_bentoml
    with pytest.raises(StageError) as info:
        asyncio.run(RemoteStages(svc=None)._call("retrieve", Failing(ours)))
    assert str(info.value) == "retrieve stage failed: Milvus search failed"
    other = RuntimeError("connect to unix:///tmp/bentoml-xyz.sock failed")
    with pytest.raises(StageError) as info:
        asyncio.run(RemoteStages(svc=None)._call("retrieve", Failing(other)))
    assert str(info.value) == "retrieve stage failed: the service call failed" and "sock" in info.value.detail
