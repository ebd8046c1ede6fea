from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from pipelines.api.schema import RagRequest
from pipelines.config import RagConfig
from pipelines.config.budget import BudgetProfile
from pipelines.query.pipeline import QueryPipeline
from services.metrics import RagMetrics
from tests.fakes import FakeStages


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def metrics() -> RagMetrics:
    return RagMetrics()  # registers its collectors once per process


def test_a_response_is_recorded_per_stage_tier_and_cache_result(metrics):
    stages = FakeStages()
    stages.fail = {"rerank"}
    budget = BudgetProfile.from_env({"RAGROUTE_BUDGET_PROFILE": "cpu"})
    resp = asyncio.run(QueryPipeline(stages, None, RagConfig(candidates=6), budget=budget).run(RagRequest(query="q")))
    before = {
        "rerank_error": value("ragroute_stage_outcomes_total", stage="rerank", outcome="error"),
        "degraded": value("ragroute_requests_total", degraded="true", cache="off"),
        "large": value("ragroute_route_decisions_total", tier="large", router="router"),
        "tokens_out": value("ragroute_tokens_total", tier="large", direction="out"),
        "embed_count": value("ragroute_stage_latency_seconds_count", stage="embed"),
        "cost": value("ragroute_cost_usd_total", tier="large"),
        "ttft_count": value("ragroute_generation_ttft_seconds_count", tier="large"),
    }
    metrics.observe(resp)
    assert value("ragroute_stage_outcomes_total", stage="rerank", outcome="error") == before["rerank_error"] + 1
    assert value("ragroute_requests_total", degraded="true", cache="off") == before["degraded"] + 1
    assert value("ragroute_route_decisions_total", tier="large", router="router") == before["large"] + 1
    assert value("ragroute_tokens_total", tier="large", direction="out") == before["tokens_out"] + 3
    assert value("ragroute_stage_latency_seconds_count", stage="embed") == before["embed_count"] + 1
    assert resp.usage.cost_usd == 2e-6
    assert abs(value("ragroute_cost_usd_total", tier="large") - (before["cost"] + 2e-6)) < 1e-12
    assert value("ragroute_generation_ttft_seconds_count", tier="large") == before["ttft_count"] + 1


def test_a_cascade_counts_its_escalation_and_both_tiers_costs(metrics):
    from pipelines.config import CascadeConfig

    stages = FakeStages()
    stages.logprobs = {"small": -3.0}
    cfg = RagConfig(candidates=6, cascade=CascadeConfig("logprob_mean", -1.0, "test"))
    budget = BudgetProfile.from_env({"RAGROUTE_BUDGET_PROFILE": "cpu"})
    resp = asyncio.run(QueryPipeline(stages, None, cfg, budget=budget).run(RagRequest(query="q", tier="cascade")))
    before = {
        "escalated": value("ragroute_cascade_escalations_total", tier="small", outcome="escalated"),
        "small_cost": value("ragroute_cost_usd_total", tier="small"),
        "large_cost": value("ragroute_cost_usd_total", tier="large"),
        "cascade": value("ragroute_route_decisions_total", tier="large", router="cascade"),
    }
    metrics.observe(resp)
    assert value("ragroute_cascade_escalations_total", tier="small", outcome="escalated") == before["escalated"] + 1
    assert value("ragroute_route_decisions_total", tier="large", router="cascade") == before["cascade"] + 1
    assert abs(value("ragroute_cost_usd_total", tier="small") - (before["small_cost"] + 2e-6)) < 1e-12
    assert abs(value("ragroute_cost_usd_total", tier="large") - (before["large_cost"] + 2e-6)) < 1e-12


def test_the_error_bounded_cache_is_reported_per_tenant(metrics):
    from pipelines.query.cache.policy import PoolStats

    metrics.usage("metrics-tenant", 0)  # a known tenant (label budget)
    # served from band 9 (1 wrong in 300 observed), which is all of the lookups: the rate over
    # lookups is the samples' wrong share
    summary = PoolStats((0,) * 9 + (300,), (0,) * 9 + (3,), samples=40, samples_wrong=1,
                        lookups=(0,) * 9 + (300,)).summary(0.05)
    metrics.cache_policy("metrics-tenant", summary)
    assert value("ragroute_cache_verification_samples", tenant="metrics-tenant") == 40
    assert value("ragroute_cache_wrong_hit_rate", tenant="metrics-tenant", stat="observed") == 0.025
    low = value("ragroute_cache_wrong_hit_rate", tenant="metrics-tenant", stat="ci95_low")
    high = value("ragroute_cache_wrong_hit_rate", tenant="metrics-tenant", stat="ci95_high")
    assert 0 < low < 0.025 < high < 0.2
    assert value("ragroute_cache_observations", tenant="metrics-tenant", outcome="wrong") == 3
    assert value("ragroute_cache_observations", tenant="metrics-tenant", outcome="agree") == 297
    metrics.cache_policy("never-seen", summary)  # not a known tenant: no new label
    assert REGISTRY.get_sample_value("ragroute_cache_verification_samples", {"tenant": "never-seen"}) is None
