"""Reranking with real embedder scores; generation with the real packaged GGUF models."""

from __future__ import annotations

import pytest

from pipelines.config import GenerationConfig
from pipelines.query.generate import Generator
from pipelines.query.rerank import HybridReranker
from pipelines.records import Chunk, ScoredChunk
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
    out = generator.generate(tier, "Who designed the Zorvik lighthouse?", lighthouse())
    assert "Castellanos" in out.text  # a fictional fact: only the context can supply it
    assert out.tier == tier and out.engine == "llamacpp" and out.finish_reason == "stop"
    assert out.tokens_in > 100 and 0 < out.tokens_out <= generator.cfg.tiers[tier].max_tokens
    expected = {"small": "SmolLM2-135M", "large": "Qwen2.5-Coder-0.5B"}[tier]
    assert out.model.startswith(expected)


def test_prompt_is_trimmed_to_the_context_limit(generator):
    tier = generator.cfg.tiers["large"]
    huge = [ScoredChunk(chunk=Chunk(id=f"h{i}", doc_id=f"h{i}", title="filler", text="lorem ipsum dolor " * 400),
                        score=1.0, dense_score=0.5) for i in range(6)]
    out = generator.generate("large", "What is lorem ipsum?", [*lighthouse(), *huge])
    assert out.tokens_in <= tier.context_tokens - tier.max_tokens
    assert out.text
