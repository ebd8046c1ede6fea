"""A real `bentoml serve services.rag:RAG` (six processes) on a free loopback port."""

from __future__ import annotations

import pytest

from evals.serving import Server, serving


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_cache) -> Server:
    # A fresh RAGROUTE_HOME: the service must build the demo index itself on first start.
    with serving(tmp_path_factory.mktemp("ragroute-home"), {"RAGROUTE_MODEL_CACHE": str(model_cache)}) as srv:
        yield srv
