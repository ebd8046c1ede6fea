"""The cascade with the real packaged models (llama.cpp small and large tiers), real FAISS
and the real embedder, in process: accept, escalate, keep for lack of time, and a routed start
with the selfcheck signal."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from index.store import IndexStore
from pipelines.api.schema import RagRequest
from pipelines.config import CascadeConfig, GenerationConfig, RagConfig
from pipelines.config.budget import STAGES, BudgetProfile
from pipelines.indexing.build import build_index
from pipelines.indexing.load import load_folder
from pipelines.query.generate import Generator
from pipelines.query.local import LocalStages
from pipelines.query.pipeline import QueryPipeline
from pipelines.query.rerank import HybridReranker
from pipelines.query.route import HeuristicRouter
from tests.conftest import FIXTURE_CORPUS

QUESTION = "Who designed the Zorvik lighthouse?"
ROOMY = BudgetProfile("roomy", {s: 60_000.0 for s in STAGES}, total_ms=180_000)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, embedder, model_cache):
    directory = tmp_path_factory.mktemp("index")
    build_index(load_folder(FIXTURE_CORPUS), directory, embedder)
    store = IndexStore.load(directory, embedding_model=embedder.model_id)
    gen_cfg = GenerationConfig.from_env({"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_GEN_PROFILE": "cpu"})
    generator = Generator(gen_cfg)
    yield LocalStages(embedder, store, HybridReranker(), HeuristicRouter(), 0.5, generator), gen_cfg
    asyncio.run(generator.close())


def display(parts, tier: str) -> str:
    """The name the API reports for ``tier``'s shipped model."""
    from pipelines.models import GGUF_MODELS

    return GGUF_MODELS[parts[1].tiers[tier].model].display


def ask(parts, threshold: float, tier_configs=None, signal: str = "logprob_mean"):
    stages, gen_cfg = parts
    cfg = RagConfig(candidates=6, cascade=CascadeConfig(signal, threshold, "test"))
    pipeline = QueryPipeline(stages, None, cfg, budget=ROOMY, tiers=list(gen_cfg.tiers),
                             tier_configs=tier_configs or dict(gen_cfg.tiers))
    return asyncio.run(pipeline.run(RagRequest(query=QUESTION, tier="cascade", top_k=2)))


def test_a_confident_small_answer_is_kept_at_a_low_threshold(parts):
    resp = ask(parts, threshold=-50.0)
    [step] = resp.route.path
    assert step.tier == "small" and step.outcome == "accepted"
    assert -50.0 < step.confidence < 0 and step.confidence == resp.usage.logprob_mean  # the real signal
    assert resp.route.model == display(parts, "small") and resp.usage.cost_usd == step.cost_usd > 0


def test_an_unsure_small_answer_escalates_to_the_large_model(parts):
    resp = ask(parts, threshold=0.0)  # a mean token log-probability is always below 0
    small, large = resp.route.path
    assert small.tier == "small" and small.outcome == "escalated" and small.confidence < 0
    assert "escalated to large" in small.reason
    assert large.tier == "large" and large.outcome == "answered"
    assert resp.route.tier == "large" and resp.route.model == display(parts, "large")
    assert "Castellanos" in resp.answer  # the large model answered from the source
    assert resp.usage.cost_usd == pytest.approx(small.cost_usd + large.cost_usd)
    assert resp.usage.tokens_in == small.tokens_in + large.tokens_in and not resp.degraded


def test_no_escalation_when_the_large_model_cannot_answer_in_the_time_left(parts):
    _, gen_cfg = parts
    slow = {**gen_cfg.tiers, "large": replace(gen_cfg.tiers["large"], prefill_tok_s=1.0)}  # ~minutes per prompt
    resp = ask(parts, threshold=0.0, tier_configs=slow)
    [step] = resp.route.path
    assert step.outcome == "kept" and "not escalated" in step.reason
    assert resp.route.tier == "small" and any(w.startswith("cascade:") for w in resp.warnings)


def test_grounded_signal_is_the_real_answers_grounding_in_its_sources(parts):
    """The grounded signal of the real small answer is what the safety stage measures on the
    served answer; above a threshold of 1.0 nothing but a fully grounded answer is kept."""
    resp = ask(parts, threshold=0.0, signal="grounded")  # every answer has grounding >= 0
    [step] = resp.route.path
    assert step.outcome == "accepted" and resp.route.tier == "small" and resp.safety.checked
    assert step.confidence == pytest.approx(resp.safety.grounding, abs=1e-4) and "grounded" in step.reason
    resp = ask(parts, threshold=1.0 + 1e-9, signal="grounded")
    small, large = resp.route.path
    assert small.outcome == "escalated" and small.confidence <= 1.0 and resp.route.tier == "large"



def test_routed_start_and_the_selfcheck_of_a_cut_off_answer(embedder, model_cache, parts):
    """A routed cascade with the real models: a route threshold of 0 sends the question straight
    to the large model; at 1.0 the small model answers first, and cut at 8 tokens (finish reason
    ``length`` from llama.cpp) its answer fails the self-check and escalates."""
    stages, _ = parts
    gen_cfg = GenerationConfig.from_env({"RAGROUTE_MODEL_CACHE": str(model_cache), "RAGROUTE_GEN_PROFILE": "cpu",
                                         "RAGROUTE_SMALL_MAX_TOKENS": "8"})
    generator = Generator(gen_cfg)
    short = LocalStages(embedder, stages.store, HybridReranker(), HeuristicRouter(), 0.5, generator)

    def ask_routed(route_threshold: float):
        cfg = RagConfig(candidates=6, cascade=CascadeConfig("selfcheck", 1.0, "test", start="routed",
                                                            route_threshold=route_threshold))
        pipeline = QueryPipeline(short, None, cfg, budget=ROOMY, tiers=list(gen_cfg.tiers),
                                 tier_configs=dict(gen_cfg.tiers))
        return asyncio.run(pipeline.run(RagRequest(query=QUESTION, tier="cascade", top_k=2)))

    try:
        direct = ask_routed(0.0)
        assert [(s.tier, s.outcome) for s in direct.route.path] == [("large", "answered")]
        assert direct.route.score is not None and "(routed start)" in direct.route.reason
        assert "Castellanos" in direct.answer
        climbed = ask_routed(1.0)
        small, large = climbed.route.path
        assert small.tier == "small" and small.tokens_out == 8 and small.outcome == "escalated"
        assert "cut off at the token limit" in small.reason and small.confidence < 1.0
        assert large.tier == "large" and climbed.route.tier == "large" and "Castellanos" in climbed.answer
    finally:
        asyncio.run(generator.close())
