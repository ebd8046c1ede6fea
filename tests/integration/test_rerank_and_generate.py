"""Reranking with real embedder scores; generation with the real packaged GGUF models."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.records import Chunk, ScoredChunk
from pipelines.config import GenerationConfig
from pipelines.query.generate import Delta, Generator
from pipelines.query.rerank import HybridReranker
from tests.conftest import FIXTURE_CORPUS


def scored(embedder, query: str, texts: list[str]) -> list[ScoredChunk]:
    """Candidates as retrieval returns them: best dense score first."""
    vecs = embedder.encode([query, *texts])
    dense = vecs[1:] @ vecs[0]
    cands = [ScoredChunk(chunk=Chunk(id=f"c{i}", doc_id=f"d{i}", title="rust", text=t), score=float(s),
                         dense_score=float(s)) for i, (t, s) in enumerate(zip(texts, dense))]
    return sorted(cands, key=lambda c: -c.score)


def test_hybrid_reranker_promotes_the_exact_match_dense_search_ranked_third(embedder):
    query = "What does Rust error E0499 mean?"
    cands = scored(embedder, query, [
        "Rust borrow checker errors explain why a mutable reference conflicts with another.",
        "Error E0499: a variable was borrowed as mutable more than once at a time.",
        "Rust compiler errors have codes that the explain command describes.",
        "Cargo is the Rust package manager and build tool.",
        "Lifetimes describe how long references stay valid.",
    ])
    assert [c.chunk.id for c in cands][:3] == ["c2", "c0", "c1"]  # dense alone: the answer is third
    ranked = HybridReranker(0.5).rerank(query, cands, top_k=3)
    assert ranked[0].chunk.id == "c1"
    assert ranked[0].dense_score == next(c.dense_score for c in cands if c.chunk.id == "c1")


@pytest.fixture(scope="module")
def generator(model_cache) -> Generator:
    return Generator(GenerationConfig.from_env({"RAGROUTE_MODEL_CACHE": str(model_cache)}))


def lighthouse() -> list[ScoredChunk]:
    text = (FIXTURE_CORPUS / "notes" / "lighthouse.md").read_text()
    tides = (FIXTURE_CORPUS / "tides.txt").read_text()
    return [ScoredChunk(chunk=Chunk(id="l", doc_id="lighthouse", title="The Zorvik lighthouse", text=text),
                        score=1.0, dense_score=0.7),
            ScoredChunk(chunk=Chunk(id="t", doc_id="tides", title="Ocean tides", text=tides),
                        score=0.2, dense_score=0.1)]


@pytest.mark.parametrize("tier", ["small", "large"])
def test_each_tier_answers_from_the_given_context(generator, tier):
    out = asyncio.run(generator.generate(tier, "Who designed the Zorvik lighthouse?", lighthouse()))
    assert "Castellanos" in out.text  # a fictional fact: only the context can supply it
    assert out.tier == tier and out.engine == "llamacpp" and out.finish_reason == "stop"
    assert out.tokens_in > 100 and 0 < out.tokens_out <= generator.cfg.tiers[tier].max_tokens
    from pipelines.models import GGUF_MODELS

    assert out.model == GGUF_MODELS[generator.cfg.tiers[tier].model].display  # the shipped tier's model
    # Confidence from the model's own token log-probabilities; cost from the tier's prices.
    assert out.logprob_min is not None and out.logprob_min <= out.logprob_mean < 0
    cfg = generator.cfg.tiers[tier]
    assert out.cost_usd == pytest.approx(cfg.cost_usd(out.tokens_in, out.tokens_out)) and out.cost_usd > 0


def test_prompt_is_trimmed_to_the_context_limit(generator):
    tier = generator.cfg.tiers["large"]
    huge = [ScoredChunk(chunk=Chunk(id=f"h{i}", doc_id=f"h{i}", title="filler", text="lorem ipsum dolor " * 400),
                        score=1.0, dense_score=0.5) for i in range(6)]
    out = asyncio.run(generator.generate("large", "What is lorem ipsum?", [*lighthouse(), *huge]))
    assert out.tokens_in <= tier.context_tokens - tier.max_tokens
    assert out.text


def test_llamacpp_streams_deltas_and_stops_decoding_when_the_consumer_leaves(generator):
    engine = generator.engines["large"]

    async def scenario():
        items = [i async for i in generator.stream("small", "Who designed the Zorvik lighthouse?", lighthouse())]
        # Leave a long answer after 3 deltas: decoding must stop within a token or so, not run
        # on for the ~150 tokens left (~4 s at 40 tok/s).
        stream = generator.stream("large", "Write a long essay about lighthouses, tides and ships.", lighthouse())
        got = [await anext(stream) for _ in range(3)]
        await stream.aclose()
        t0 = time.monotonic()
        await asyncio.to_thread(engine._busy.acquire)  # the decoding thread has finished
        engine._busy.release()
        return items, got, time.monotonic() - t0

    items, got, wait = asyncio.run(scenario())
    deltas, final = items[:-1], items[-1]
    assert len(deltas) > 1 and all(isinstance(d, Delta) for d in deltas)
    assert "".join(d.text for d in deltas).strip() == final.text and final.ttft_ms < final.latency_ms
    assert all(isinstance(d, Delta) for d in got)
    assert wait < 0.5
