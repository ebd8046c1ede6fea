"""A real `bentoml serve services.rag:RAG` (six processes) on a free loopback port."""

from __future__ import annotations

import pytest

from evals.serving import Server, serving

# Functional end-to-end tests run with generous budgets: under a loaded CI machine a stage
# may be slow, and these tests are about answers, caching and validation, not latency.
GENEROUS_BUDGETS = {f"RAGROUTE_BUDGET_{s}_MS": "30000" for s in ("CACHE", "EMBED", "RETRIEVE", "RERANK", "ROUTE")} | {
    "RAGROUTE_BUDGET_GENERATE_MS": "120000", "RAGROUTE_BUDGET_TOTAL_MS": "180000"}


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_cache) -> Server:
    # A fresh RAGROUTE_HOME: the service must build the demo index itself on first start.
    # RAGROUTE_CACHE_POLICY=verifier: the tests on this server measure semantic hits (their hops,
    # under load) from the first paraphrase on; the default error-bounded policy serves them only
    # after hundreds of observations and is tested through its own server (test_redis_cache.py).
    env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_CACHE_POLICY": "verifier", **GENEROUS_BUDGETS}
    with serving(tmp_path_factory.mktemp("ragroute-home"), env) as srv:
        yield srv
