"""The wire protocol between the RAG service and the stage services (pipelines/api/wire.py), and
the RAG side's reading of the Generation stream (services/remote_stages.py): deltas split
anywhere, the error line, a stream without its final record, a line that is no event."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from common.errors import BadRequest, StageError, UpstreamError
from common.records import TierAnswer
from pipelines.api import wire
from pipelines.query.generate import Delta
from services.remote_stages import RemoteStages

ANSWER = TierAnswer(text="It is 42 [1].", tier="small", model="m", engine="fake", tokens_in=10, tokens_out=5,
                    latency_ms=12.5, cost_usd=0.0, finish_reason="stop")


def stages_streaming(*chunks: bytes | str) -> tuple[RemoteStages, list]:
    closed = []

    async def generate_stream(**kwargs):
        try:
            for c in chunks:
                yield c
        finally:
            closed.append(True)

    svc = SimpleNamespace(generation=SimpleNamespace(to_async=SimpleNamespace(generate_stream=generate_stream)))
    return RemoteStages(svc), closed


def collect(stages: RemoteStages) -> list:
    async def run():
        return [item async for item in stages.generate_stream("small", "q", [], 1000.0)]
    return asyncio.run(run())


def test_events_round_trip_through_lines_split_anywhere():
    text = "".join(wire.line(e) for e in (wire.TextEvent(t="It is "), wire.TextEvent(t="42 [1]."),
                                          wire.FinalEvent(final=ANSWER)))
    stages, closed = stages_streaming(*[text[i:i + 7].encode() for i in range(0, len(text), 7)])
    items = collect(stages)
    assert items == [Delta("It is "), Delta("42 [1]."), ANSWER] and closed == [True]


def test_an_error_line_fails_the_stage_with_its_message():
    stages, closed = stages_streaming(wire.line(wire.TextEvent(t="It")),
                                      wire.line(wire.StageFailure(error="engine error: boom", status=503)))
    with pytest.raises(StageError, match=r"generate\[small\] stage failed: engine error: boom"):
        collect(stages)
    assert closed == [True]


def test_a_stream_without_its_final_record_fails_the_stage():
    stages, _ = stages_streaming(wire.line(wire.TextEvent(t="It is")))
    with pytest.raises(StageError, match="the stream ended without a result"):
        collect(stages)


def test_a_line_that_is_no_event_fails_the_stage_naming_it():
    stages, _ = stages_streaming('{"word": "x"}\n')
    with pytest.raises(StageError, match="the stream broke off") as info:
        collect(stages)
    assert "unknown stream event" in info.value.detail  # the log's; the client reads the message
    stages, _ = stages_streaming('{"final": {"text": 3}}\n')
    with pytest.raises(StageError) as info:
        collect(stages)
    assert "malformed FinalEvent" in info.value.detail


def test_one_mapping_from_errors_to_what_travels():
    assert wire.failure(StageError("generate[large]", "timed out")) == wire.StageFailure(error="timed out", status=503)
    assert wire.failure(UpstreamError("generate[large]", "HTTP 429")).status == 502
    assert wire.failure(BadRequest("tier", "no such tier")) == wire.StageFailure(error="tier: no such tier", status=400)
    # an engine's own text (paths, hosts, library internals) stays in that service's log
    assert wire.failure(RuntimeError("CUDA out of memory at /opt/x")).error == "engine error (RuntimeError)"


def test_generate_bodies():
    assert wire.parse_generate(wire.GenerateResult(generation=ANSWER).model_dump(), "generate[small]") == ANSWER
    with pytest.raises(StageError, match=r"generate\[large\] stage failed: upstream timed out"):
        wire.parse_generate({"error": "upstream timed out", "status": 502}, "generate[large]")


def test_the_stage_apis_take_the_wire_requests_and_refuse_what_they_bound():
    import pydantic

    from services.generation import Generation
    from services.reranking import Reranking
    from services.retrieval import Retrieval
    from services.routing import Routing

    specs = {(svc, name): svc.apis[name].input_spec for svc, name in [
        (Retrieval, "search"), (Retrieval, "search_text"), (Reranking, "rerank"), (Routing, "route"),
        (Generation, "generate"), (Generation, "generate_stream")]}
    expected = [wire.SearchRequest, wire.SearchTextRequest, wire.RerankRequest, wire.RouteRequest,
                wire.GenerateRequest, wire.GenerateRequest]
    assert all(issubclass(spec, model) for spec, model in zip(specs.values(), expected))
    with pytest.raises(pydantic.ValidationError, match="extra_field"):
        wire.RerankRequest(query="q", candidates=[], extra_field=1)
    with pytest.raises(pydantic.ValidationError, match="top_k"):
        wire.RerankRequest(query="q", candidates=[], top_k=1001)
    with pytest.raises(pydantic.ValidationError, match="budget_ms"):
        wire.GenerateRequest(tier="small", query="q", sources=[], budget_ms=0.5)
    with pytest.raises(pydantic.ValidationError, match="vector"):
        wire.SearchRequest(vector=[0.0] * 8193)


def test_the_hop_benchmarks_no_op_rag_query_takes_every_field_of_the_real_one():
    """evals/hops.py measures the real rag_query against a no-op of the same shape: a field the
    no-op lacks turns every one of its requests into a 500 and the comparison into noise."""
    import inspect

    from evals.hops_service import NoopRag
    from pipelines.api.schema import RagRequest

    assert set(inspect.signature(NoopRag.apis["rag_query"].func).parameters) - {"self"} == set(RagRequest.model_fields)
