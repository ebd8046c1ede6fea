"""Real `bentoml serve services.rag:RAG` stacks (six processes each) on free loopback ports.

Servers are scoped to the tests that use them: a module with its own settings starts its own
(module scope); the modules that need only the common settings share one, ``server``. Those
modules run one after another (``pytest_collection_modifyitems`` groups them) and the shared
server is stopped after the last of their tests, not left running through the rest of the
suite.

Every stack but test_defaults.py's (which checks that a first start builds the demo index)
starts from a home holding a copy of one demo index built once for the session
(``e2e_home``): building it is the slowest part of a first start.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.serving import Server, serving

# Functional end-to-end tests run with generous budgets: under a loaded CI machine a stage
# may be slow, and these tests are about answers, caching and validation, not latency.
GENEROUS_BUDGETS = {f"RAGROUTE_BUDGET_{s}_MS": "30000" for s in ("CACHE", "EMBED", "RETRIEVE", "RERANK", "ROUTE")} | {
    "RAGROUTE_BUDGET_GENERATE_MS": "120000", "RAGROUTE_BUDGET_TOTAL_MS": "180000"}

E2E = Path(__file__).resolve().parent
_shared: dict[str, object] = {}  # the shared server's context manager, while it runs


@pytest.fixture(scope="session")
def server(e2e_home, model_cache) -> Server:
    # RAGROUTE_CACHE_POLICY=verifier: the tests on this server measure semantic hits (their hops,
    # under load) from the first paraphrase on; the default error-bounded policy serves them only
    # after hundreds of observations and is tested through its own server (test_redis_cache.py).
    env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_CACHE_POLICY": "verifier", **GENEROUS_BUDGETS}
    context = serving(e2e_home("ragroute-home"), env)
    srv = context.__enter__()
    _shared["context"] = context
    yield srv
    _stop_shared()


def _stop_shared() -> None:
    context = _shared.pop("context", None)
    if context is not None:
        context.__exit__(None, None, None)


def _uses_shared(item) -> bool:
    """The test asks for ``server`` and its module does not define its own."""
    return (Path(str(item.fspath)).parent == E2E and "server" in getattr(item, "fixturenames", ())
            and not hasattr(getattr(item, "module", None), "server"))


def pytest_collection_modifyitems(config, items):
    """The tests on the shared server run together, where the first of them would."""
    shared = [item for item in items if _uses_shared(item)]
    if not shared:
        return
    first = items.index(shared[0])
    rest = [item for item in items if not _uses_shared(item)]
    items[:] = rest[:first] + shared + rest[first:]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # the test's own fixtures (module fixtures on the server too) are torn down first
    if _uses_shared(item) and (nextitem is None or not _uses_shared(nextitem)):
        _stop_shared()
