"""The shipped hit verifier on real embeddings (all-MiniLM-L6-v2): paraphrases pass, near
misses that the cosine alone would let through above the verifier's floor do not."""

from __future__ import annotations

import pytest

from pipelines.config import CacheConfig
from pipelines.query.cache import InMemoryCache, Partition, SemanticCache
from pipelines.query.cache.verify import HitVerifier

P = Partition("acme", "idx-v1", "fp1")


@pytest.fixture(scope="module")
def verifier():
    return HitVerifier.load(embedding_model="all-MiniLM-L6-v2")


@pytest.mark.parametrize("cached,query", [
    ("How can I improve my English speaking skills?", "What can I do to speak English better?"),
    ("How do I lose weight fast?", "What is the fastest way to lose weight?"),
])
def test_paraphrases_with_other_words_pass_the_learned_check(embedder, verifier, cached, query):
    a, b = embedder.encode([cached, query])
    sim = float(a @ b)
    assert verifier.vector_threshold <= sim < verifier.sure_cosine  # the model decides, not the cosine
    verdict = verifier.check(cached, query, sim, a, b)
    assert verdict.accept and verdict.reason.startswith("accepted: P(same question)")


@pytest.mark.parametrize("cached,query", [
    ("How do I reverse a list in Python?", "How do I reverse a string in Python?"),
    ("How do I read a file line by line?", "How do I write a file line by line?"),
])
def test_near_misses_above_the_floor_are_rejected_with_the_probability(embedder, verifier, cached, query):
    a, b = embedder.encode([cached, query])
    sim = float(a @ b)
    assert sim >= verifier.vector_threshold and not verifier.reasons(cached, query)  # no rule catches them
    verdict = verifier.check(cached, query, sim, a, b)
    assert not verdict.accept and verdict.probability < verifier.accept_probability
    assert verdict.reason.startswith("rejected: P(same question)")


def test_semantic_cache_uses_the_verifier_floor_and_the_stored_embeddings(embedder, verifier):
    cache = SemanticCache(InMemoryCache(CacheConfig()), CacheConfig().threshold, verifier)
    assert cache.threshold == verifier.vector_threshold  # unset threshold: the verifier's floor
    for q in ("How do I reverse a list in Python?", "How can I improve my English speaking skills?"):
        cache.put(P, q, q, embedder.encode([q])[0], {"answer": q}, ["doc"])
    miss = cache.get_semantic(P, "How do I reverse a string in Python?",
                              embedder.encode(["How do I reverse a string in Python?"])[0])
    assert miss.hit is None and "rejected: P(same question)" in miss.verdicts[0]
    hit = cache.get_semantic(P, "What can I do to speak English better?",
                             embedder.encode(["What can I do to speak English better?"])[0])
    assert hit.hit is not None and hit.hit.payload == {"answer": "How can I improve my English speaking skills?"}


def test_the_judge_eval_scores_every_pair_with_each_signal_on_the_real_models(model_cache, tmp_path):
    """`python -m evals.cache_judge` on the first two questions: the large tier's model as the judge
    (sha256-checked, with judge.py's prompt), every signal reported with an AUC and the share of rewordings it passes."""
    import json

    from evals.cache_judge import main

    out = tmp_path / "judge.json"
    assert main(["--limit", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    meta = result["meta"]
    from pipelines.config.generation import TIER_PROFILES
    from pipelines.models import GGUF_MODELS

    name = str(TIER_PROFILES["cpu"]["large"]["model"])
    assert meta["judge_model"] == name and meta["judge_model_file"] == GGUF_MODELS[name].filename
    assert meta["pairs"] == meta["rewordings"] + meta["near_misses"] + meta["neighbours"] == meta["test_pairs"]
    assert meta["rewordings"] >= 4 and meta["neighbours"] == 2
    assert meta["judge_ms_per_pair"]["p50"] > 0
    assert set(result["held_out"]) == {"cosine", "verifier", "sources", "rare terms", "judge"}
    for row in result["held_out"].values():
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["right_passed"] <= 1.0
        assert row["wrong_passed"] == 0.0  # 2% of the first two questions' wrong pairs is none
