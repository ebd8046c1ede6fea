"""A fourth mode is one class plus one registry line: a toy mode registered in a test answers
and streams through the same pipeline, and an unregistered name is refused naming ``tier``."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import BadRequest
from common.records import RouteDecision
from pipelines.api.schema import RagRequest, RagResponse
from pipelines.query import modes
from pipelines.query.modes.base import Mode
from pipelines.query.pipeline import QueryPipeline
from pipelines.query.state import RequestState
from pipelines.query.tiers import TierRunner
from tests.fakes import FakeStages
from tests.unit.test_pipeline_modes import CFG, GENEROUS, TIERS


class Cheapest(Mode):
    """Toy mode: always the cheapest configured tier, whatever the router would say."""

    name = "cheapest"

    def requested(self, run: TierRunner, r: RequestState) -> RouteDecision:
        return RouteDecision(tier=run.tiers[0], score=0.0, threshold=0.0, router="request",
                             reason="toy mode: the cheapest tier")


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(modes.MODES, "cheapest", Cheapest())  # the one registry line


def pipeline(stages: FakeStages) -> QueryPipeline:
    return QueryPipeline(stages, None, CFG, budget=GENEROUS, tier_configs=TIERS, tiers=("small", "large"))


def test_a_registered_mode_answers(registered):
    stages = FakeStages()
    resp = asyncio.run(pipeline(stages).run(RagRequest(query="what does with do", tier="cheapest")))
    assert resp.route.mode == "cheapest" and resp.route.tier == "small"
    assert resp.route.reason == "toy mode: the cheapest tier" and not resp.degraded
    assert [c for c in stages.calls if c.startswith(("generate", "route"))] == ["generate[small]"]
    assert [s.tier for s in resp.route.path] == ["small"]


def test_a_registered_mode_streams(registered):
    stages = FakeStages()

    async def collect():
        return [e async for e in pipeline(stages).stream(RagRequest(query="what does with do", tier="cheapest"))]

    events = asyncio.run(collect())
    assert events[0]["event"] == "meta" and events[0]["route"]["mode"] == "cheapest"
    assert events[0]["route"]["tier"] == "small"
    done = RagResponse.model_validate(events[-1]["response"])
    assert done.answer.startswith("".join(e["text"] for e in events if e["event"] == "token")[:20])
    assert done.route.mode == "cheapest" and not done.degraded


def test_an_unregistered_mode_is_refused_naming_the_field():
    with pytest.raises(BadRequest) as err:
        asyncio.run(pipeline(FakeStages()).run(RagRequest(query="q", tier="cheapest")))
    assert err.value.field == "tier" and "valid: auto, cascade, small, large" in str(err.value)


def test_a_registered_mode_is_offered_where_modes_are_listed(registered):
    from pipelines.api.openai_compat import model_names, resolve_model

    assert modes.available(["small", "large"]) == ["auto", "cascade", "cheapest"]
    assert modes.available(["small"]) == ["auto", "cheapest"]  # a cascade needs two tiers
    assert "ragroute-cheapest" in model_names(["small", "large"])  # the OpenAI API's /v1/models
    assert resolve_model("ragroute-cheapest", ["small", "large"]) == "cheapest"
