"""What a user gets from `make serve`: the shipped `cpu` profile with no overrides at all (no
generous budgets, no throughput settings), through `bentoml serve`.

The other e2e tests give every stage generous budgets so they can check answers, caching and
validation on a loaded machine; this module checks that the defaults themselves answer the
README's question in time, concisely, and citing the right source.
"""

from __future__ import annotations

import re

import httpx
import pytest

from evals.serving import serving
from pipelines.config.budget import PROFILES

QUESTION = "What does the with statement do?"  # the README's first question


@pytest.fixture(scope="module")
def default_server(tmp_path_factory, model_cache):
    with serving(tmp_path_factory.mktemp("ragroute-defaults"), {"RAGROUTE_MODEL_CACHE": str(model_cache)}) as srv:
        yield srv


def cited_sources(resp: dict) -> list[dict]:
    numbers = {int(n) for n in re.findall(r"\[(\d+)\]", resp["answer"])}
    return [resp["sources"][n - 1] for n in sorted(numbers) if 1 <= n <= len(resp["sources"])]


@pytest.mark.parametrize("tier", ["auto", "large"])
def test_the_readme_question_is_answered_in_time_citing_a_with_source(default_server, tier):
    resp = default_server.post({"query": QUESTION, "tier": tier, "cache": "bypass"}).json()
    assert resp["budget_profile"] == "cpu"
    assert not resp["degraded"], resp["warnings"]
    assert resp["route"]["model"] != "extractive" and resp["usage"]["finish_reason"] == "stop"
    assert resp["budget"]["generate"]["budget_ms"] == PROFILES["cpu"]["generate"] == 16000
    assert not resp["budget"]["generate"]["overrun"]
    assert any(s["doc_id"] == "pydoc:with" for s in cited_sources(resp)), resp["answer"]
    assert len(resp["answer"]) <= 600, resp["answer"]  # one or two sentences, not the sources repeated


def test_the_start_up_log_names_the_ladder_and_the_router_threshold(default_server):
    log = default_server.log.read_text(errors="replace")
    assert ("tier ladder (cpu profile, cheapest first): small = qwen2.5-coder-0.5b-instruct (llamacpp), "
            "large = qwen2.5-coder-1.5b-instruct (llamacpp)") in log
    assert "router: heuristic (built in), threshold 0.000 (the cpu tiers' default, docs/routing.md)" in log


def test_the_generation_rates_are_measured_and_on_metrics(default_server):
    default_server.post({"query": QUESTION, "tier": "small", "cache": "bypass"})
    metrics = httpx.get(f"{default_server.url}/metrics", timeout=30).text
    rates = {}
    for labels, value in re.findall(r"^ragroute_generation_tokens_per_second\{([^}]*)\} (\S+)$", metrics, re.M):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        rates[(named["phase"], named["tier"])] = float(value)
    assert {("prefill", "small"), ("decode", "small"), ("prefill", "large"), ("decode", "large")} <= set(rates)
    # measured on this machine: neither the small tier's prior nor zero
    from pipelines.config.generation import TIER_PROFILES

    prior = TIER_PROFILES["cpu"]["small"]
    assert all(v > 0 for v in rates.values())
    assert rates[("prefill", "small")] != prior["prefill_tok_s"] and rates[("decode", "small")] != prior["decode_tok_s"]


def test_a_first_start_builds_the_demo_index(default_server):
    """This server started from an empty RAGROUTE_HOME (the other e2e stacks start from a copy)."""
    import json

    manifest = default_server.home / "indexes" / "demo" / "manifest.json"
    assert manifest.is_file() and json.loads(manifest.read_text())["source"] == "pydoc_data.topics"
    assert "building the demo index" in default_server.log.read_text(errors="replace")
