"""A cascade with a routed start and the selfcheck signal through `bentoml serve`, with a
trained router artifact and the real small and large models: a question the learned router
scores hard goes straight to the large tier (decided by the Routing service at the cascade's
own route threshold); an easy one is answered by the small tier and judged by its self-check."""

from __future__ import annotations

import pytest

from evals.serving import serving
from pipelines.query import selfcheck
from tests import routing_data
from tests.e2e.conftest import GENEROUS_BUDGETS
from tests.e2e.test_routing_modes import EASY, HARD


@pytest.fixture(scope="module")
def server(tmp_path_factory, e2e_home, model_cache):
    artifact = routing_data.trained_router(tmp_path_factory.mktemp("router"))
    # route threshold 0.7: between the easy questions' scores (~0.5) and the hard ones' (~1.0);
    # the artifact's own router threshold is another (calibrated on its toy data), so a reason
    # saying 0.70 shows the cascade's threshold reached the Routing service
    env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_ROUTER_PATH": str(artifact),
           "RAGROUTE_CASCADE_START": "routed", "RAGROUTE_CASCADE_ROUTE_THRESHOLD": "0.7",
           "RAGROUTE_CASCADE_SIGNAL": "selfcheck", **GENEROUS_BUDGETS}
    with serving(e2e_home("home"), env) as srv:
        yield srv


def test_a_hard_question_starts_at_the_large_tier(server):
    resp = server.post({"query": HARD, "top_k": 1, "tier": "cascade", "cache": "bypass"}).json()
    route = resp["route"]
    assert route["mode"] == "cascade" and route["tier"] == "large" and route["score"] >= 0.7
    assert "(routed start)" in route["reason"] and ">= threshold 0.70" in route["reason"]
    assert [(s["tier"], s["outcome"]) for s in route["path"]] == [("large", "answered")]
    assert route["model"].startswith("Qwen2.5-Coder-1.5B") and not resp["degraded"]


def test_an_easy_question_is_answered_small_and_self_checked(server):
    # The small tier's own answer to it (greedy decoding, the same sources): what the cascade's
    # self-check must judge. Its verdict is then the one that answer dictates, not either.
    alone = server.post({"query": EASY, "top_k": 1, "tier": "small", "cache": "bypass"}).json()
    problems = selfcheck.check(alone["answer"], alone["usage"]["finish_reason"]).problems
    resp = server.post({"query": EASY, "top_k": 1, "tier": "cascade", "cache": "bypass"}).json()
    route = resp["route"]
    assert route["score"] < 0.7 and "< threshold 0.70" in route["reason"]
    small = route["path"][0]
    assert small["tier"] == "small" and small["reason"].startswith("selfcheck ") and small["threshold"] == 1.0
    if not problems:
        assert small["outcome"] == "accepted" and small["confidence"] == 1.0 and len(route["path"]) == 1
        assert resp["answer"] == alone["answer"]
    else:
        assert small["outcome"] == "escalated" and small["confidence"] < 1.0, (problems, small)
        assert [s["tier"] for s in route["path"]] == ["small", "large"] and route["tier"] == "large"
