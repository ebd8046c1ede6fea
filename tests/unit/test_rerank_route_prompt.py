from __future__ import annotations

import pytest

from common.errors import ConfigError
from pipelines.config import RerankConfig
from pipelines.query.prompt import INSTRUCTION, build_messages
from pipelines.query.rerank import HybridReranker, bm25_scores, distinct, make_reranker
from pipelines.query.route import HeuristicRouter, QueryFeatures, decide, make_router
from tests.fakes import chunk


def test_bm25_rewards_matching_rare_terms():
    docs = ["the with statement wraps a block", "the for statement loops", "a block of text"]
    scores = bm25_scores("with statement", docs)
    assert scores[0] > scores[1] > scores[2] == 0.0


def test_hybrid_reranker_lifts_the_lexical_match():
    cands = [chunk(0, "generic text about blocks and scopes"), chunk(1, "the yield expression suspends"),
             chunk(2, "a yield statement in a generator function")]
    ranked = HybridReranker(dense_weight=0.3).rerank("What does the yield statement do?", cands, top_k=2)
    assert [r.chunk.id for r in ranked] == ["c2", "c1"]
    assert ranked[0].score >= ranked[1].score and ranked[0].dense_score == cands[2].dense_score


def test_dense_weight_one_keeps_retrieval_order():
    cands = [chunk(i, f"text {i}") for i in range(4)]
    assert [r.chunk.id for r in HybridReranker(1.0).rerank("text 3", cands, 4)] == ["c0", "c1", "c2", "c3"]


DEFAULTS = ("Default parameter values are evaluated from left to right when the function definition is "
            "executed. This means that the expression is evaluated once, and that the same pre-computed value is "
            "used for each call.")


def test_the_default_stage_keeps_retrieval_order_and_drops_a_passage_reprinted_elsewhere():
    """Seen on the demo corpus: the help topics "function" and "compound" carry the same passage
    about default arguments, and it filled two of the prompt's four source slots."""
    cands = [chunk(0, DEFAULTS), chunk(1, "Function definitions are executable statements."),
             chunk(2, "Compound statements contain groups of other statements. " + DEFAULTS[:150]),  # 150 chars of it
             chunk(3, DEFAULTS + " Defaults are shared."), chunk(4, "A lambda expression makes a function."),
             chunk(5, "Calls evaluate their arguments left to right.")]
    stage = make_reranker(RerankConfig())
    assert RerankConfig().scorer == "fusion" and stage.name == "fusion"
    assert [r.chunk.id for r in stage.rerank("default arguments", cands, 4)] == ["c0", "c1", "c4", "c5"]
    assert [r.chunk.id for r in distinct(cands, 6, threshold=1.01)] == [f"c{i}" for i in range(6)]  # > 1: all kept
    # the other scorers filter the same way after reordering
    assert len({r.chunk.id for r in HybridReranker(0.5).rerank("default arguments", cands, 4)} & {"c0", "c2", "c3"}) == 1


def test_router_sends_short_factoid_small_and_multi_part_reasoning_large():
    router = make_router("heuristic")
    small = decide(router, "What is a lambda?", QueryFeatures(retrieval_scores=[0.7]), 0.5)
    large = decide(router, "Why does the with statement call __exit__ on errors, and how would I design "
                   "a context manager that retries a block three times? Compare it with try/finally.",
                   QueryFeatures(retrieval_scores=[0.7]), 0.5)
    assert small.tier == "small" and small.score < 0.5 and "factoid" in small.reason
    assert large.tier == "large" and large.score >= 0.5 and "reasoning" in large.reason


def test_weak_retrieval_raises_the_score():
    router = HeuristicRouter()
    q = "What is a lambda?"
    assert router.score(q, QueryFeatures(retrieval_scores=[0.1])) > router.score(q, QueryFeatures(retrieval_scores=[0.8]))


def test_decision_threshold_boundary():
    class Fixed:
        name = "fixed"

        def score(self, q, f):
            return 0.5

        def explain(self, q, f):
            return "fixed"

    assert decide(Fixed(), "q", QueryFeatures(), 0.5).tier == "large"
    assert decide(Fixed(), "q", QueryFeatures(), 0.51).tier == "small"


def test_unknown_router_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid: heuristic"):
        make_router("bert")


def words(text: str) -> int:
    return len(text.split())


def test_prompt_numbers_sources_and_keeps_the_question():
    msgs = build_messages("What is X?", [chunk(0, "X is a thing."), chunk(1, "Y is another.")],
                          prompt_tokens=1000, count_tokens=words)
    user = msgs[1]["content"]
    assert "[1] doc 0\nX is a thing." in user and "[2] doc 1" in user
    assert user.endswith(f"Question: What is X?\n{INSTRUCTION}")


def test_prompt_trims_sources_not_the_question_to_fit():
    long = " ".join(["filler"] * 2000)
    question = "What is the answer to this long question " + "please " * 50 + "?"
    msgs = build_messages(question, [chunk(0, long), chunk(1, long), chunk(2, long)],
                          prompt_tokens=600, count_tokens=words)
    total = words(msgs[0]["content"]) + words(msgs[1]["content"]) + 16
    assert total <= 600
    assert msgs[1]["content"].endswith(f"{question}\n{INSTRUCTION}") and "[1]" in msgs[1]["content"]
