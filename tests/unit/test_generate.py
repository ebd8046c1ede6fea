"""Generator logic with a fake engine: time budget -> token limit, refusal when it can't fit."""

from __future__ import annotations

import pytest

from pipelines.config import GenerationConfig, TierConfig
from pipelines.errors import StageError
from pipelines.query.generate import EngineOutput, Generator
from tests.fakes import chunk


class WordEngine:
    name, model = "fake", "fake-model"

    def __init__(self) -> None:
        self.max_tokens: list[int] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def chat(self, messages, *, max_tokens, temperature):
        self.max_tokens.append(max_tokens)
        return EngineOutput("ok [1]", "stop", 10, 2)


def generator(**tier) -> tuple[Generator, WordEngine]:
    base = dict(name="small", engine="llamacpp", model="smollm2-135m-instruct", context_tokens=2048,
                max_tokens=160, prefill_tok_s=100.0, decode_tok_s=50.0)
    cfg = GenerationConfig(tiers={"small": TierConfig(**{**base, **tier})}, threads=1, temperature=0.0)
    engine = WordEngine()
    return Generator(cfg, engines={"small": engine}), engine


def test_no_budget_means_the_tier_limit():
    g, engine = generator()
    g.generate("small", "What is X?", [chunk(0, "X is a thing.")])
    assert engine.max_tokens == [160]


def test_budget_becomes_a_token_limit():
    g, engine = generator()
    sources = [chunk(0, " ".join(["word"] * 100))]
    g.generate("small", "What is X?", sources, budget_ms=2000)
    # The prompt is ~140 words (source + system + question): ~1.4 s of prefill at 100 tok/s.
    (limit,) = engine.max_tokens
    assert 8 <= limit < 160 and limit == pytest.approx((2.0 - 1.4 - 0.2) * 50, abs=4)


def test_too_little_time_is_refused_at_once():
    g, engine = generator()
    with pytest.raises(StageError, match="not enough for a"):
        g.generate("small", "What is X?", [chunk(0, " ".join(["word"] * 100))], budget_ms=1500)
    assert engine.max_tokens == []
