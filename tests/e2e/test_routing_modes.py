"""rag_query's modes through `bentoml serve` with a trained router artifact: auto (learned
router), cascade (escalation with the real small and large models, plain and streamed) and a
fixed tier; and the Routing service refusing a corrupt artifact at start-up."""

from __future__ import annotations


import httpx
import pytest

from evals.serving import serving
from pipelines.routing.artifact import WEIGHTS
from tests import routing_data
from tests.e2e.conftest import GENEROUS_BUDGETS
from tests.e2e.test_rag_query import sse

HARD = "Explain step by step why the garbage collector pauses, and compare it with reference counting."
EASY = "What is a lambda?"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return routing_data.trained_router(tmp_path_factory.mktemp("router"))


@pytest.fixture(scope="module")
def server(e2e_home, model_cache, artifact):
    # Cascade threshold 0: every answer's mean token log-probability is below it, so a cascade
    # always escalates (accepting is covered with real models in tests/integration/test_cascade.py).
    # Route threshold 0.7: between "going large gains nothing" (0.5, the easy questions) and
    # "gains" (1.0, the hard ones). The artifact's own threshold, calibrated for 95% quality on
    # 60 toy questions, sits inside the hard cluster, so an unseen hard question may fall either side.
    env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_ROUTER_PATH": str(artifact),
           "RAGROUTE_CASCADE_THRESHOLD": "0", "RAGROUTE_ROUTE_THRESHOLD": "0.7", **GENEROUS_BUDGETS}
    with serving(e2e_home("home"), env) as srv:
        yield srv


def test_auto_mode_routes_with_the_learned_router(server):
    hard = server.post({"query": HARD, "top_k": 1, "cache": "bypass"}).json()
    easy = server.post({"query": EASY, "top_k": 1, "cache": "bypass"}).json()
    for resp in (hard, easy):
        assert resp["route"]["mode"] == "auto" and resp["route"]["reason"].startswith("learned score")
        assert [s["outcome"] for s in resp["route"]["path"]] == ["answered"]
    assert hard["route"]["score"] > easy["route"]["score"]
    assert (hard["route"]["tier"], easy["route"]["tier"]) == ("large", "small")


def test_cascade_mode_escalates_and_shows_the_path(server):
    resp = server.post({"query": EASY, "top_k": 1, "tier": "cascade", "cache": "bypass"}).json()
    assert resp["route"]["mode"] == "cascade" and resp["route"]["score"] is None
    small, large = resp["route"]["path"]
    assert small["tier"] == "small" and small["outcome"] == "escalated" and small["confidence"] < 0
    assert "< threshold 0.000" in small["reason"] and small["threshold"] == 0.0
    assert large["tier"] == "large" and large["outcome"] == "answered" and resp["route"]["tier"] == "large"
    assert resp["usage"]["cost_usd"] == pytest.approx(small["cost_usd"] + large["cost_usd"], rel=1e-6)
    assert not resp["degraded"]


def test_streamed_cascade_reports_the_path_before_and_after_the_tokens(server):
    events = [e for _, e in sse(server, {"query": EASY, "top_k": 1, "tier": "cascade", "cache": "bypass"})]
    assert events[0]["event"] == "meta" and events[-1]["event"] == "done"
    assert events[0]["route"]["tier"] == "large" and events[0]["route"]["path"][0]["outcome"] == "escalated"
    assert sum(e["event"] == "token" for e in events) >= 1
    done = events[-1]["response"]
    assert [s["outcome"] for s in done["route"]["path"]] == ["escalated", "answered"]


def test_fixed_tier_and_bad_modes(server):
    resp = server.post({"query": EASY, "top_k": 1, "tier": "small", "cache": "bypass"}).json()
    assert resp["route"]["mode"] == "fixed" and resp["route"]["tier"] == "small"
    bad = server.post({"query": EASY, "tier": "cheapest"})
    assert bad.status_code == 400 and "valid: auto, cascade, small, large" in bad.text


def test_a_corrupt_router_artifact_stops_the_routing_service(tmp_path, artifact):
    broken = tmp_path / "router"
    broken.mkdir()
    for f in artifact.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = bytearray((broken / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / WEIGHTS).write_bytes(bytes(data))
    env = {"RAGROUTE_ROUTER_PATH": str(broken)}
    with pytest.raises(RuntimeError, match="does not match the sha256 in router.json"):
        with serving(tmp_path / "home", env, target="services.routing:Routing"):
            pass
    # ... unless a fallback is configured: then it serves the heuristic and says why
    with serving(tmp_path / "home2", {**env, "RAGROUTE_ROUTER_FALLBACK": "heuristic"},
                 target="services.routing:Routing") as srv:
        info = httpx.post(f"{srv.url}/info", json={}, timeout=30).json()
        assert info["router"] == "heuristic" and "the artifact was refused" in info["source"]
        decision = httpx.post(f"{srv.url}/route", json={"query": HARD}, timeout=30).json()
        assert decision["router"] == "heuristic" and decision["tier"] == "large"
