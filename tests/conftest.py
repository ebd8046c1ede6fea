"""Shared fixtures. Tiers are chosen by folder: tests/unit (fast, doubles allowed),
tests/integration (real models, real FAISS), tests/e2e (real `bentoml serve`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_CORPUS = ROOT / "tests" / "fixtures" / "corpus"


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def embedder():
    from pipelines.config import EmbeddingConfig
    from pipelines.query.embed import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """The real model cache (`make models` fills it); fetched here if a run skipped that step."""
    from pipelines import config, models

    cache = config.model_cache()
    for name in models.DEFAULT_MODELS:
        models.fetch(name, cache)
    return cache


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("RAGROUTE_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real Redis 8 + RediSearch (from PyPI packages), started for this test session."""
    from evals.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus (Milvus Lite's gRPC server, from PyPI) in its own process, reached by URI."""
    from evals.milvus_server import MilvusServer

    server = MilvusServer(tmp_path_factory.mktemp("milvus")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory, model_cache):
    """A real OpenAI-compatible server (llama.cpp's) on the small packaged model, with an API key."""
    from evals.openai_server import OpenAIServer
    from pipelines import models

    server = OpenAIServer(models.verified_path("smollm2-135m-instruct", model_cache),
                          tmp_path_factory.mktemp("openai"), api_key="test-key").start()
    yield server
    server.stop()


# The demo index and fresh homes holding it: the e2e and adversarial suites start their stacks from them.
@pytest.fixture(scope="session")
def demo_index(tmp_path_factory, embedder) -> Path:
    """The demo index, built once for the session (what a first start builds)."""
    from pipelines.indexing.build import ensure_demo_index

    return ensure_demo_index(tmp_path_factory.mktemp("demo") / "demo", lambda: embedder)


@pytest.fixture(scope="session")
def e2e_home(tmp_path_factory, demo_index):
    """``e2e_home(name)``: a fresh RAGROUTE_HOME whose demo index is already there."""

    def make(name: str) -> Path:
        home = tmp_path_factory.mktemp(name)
        shutil.copytree(demo_index, home / "indexes" / "demo")
        return home

    return make
