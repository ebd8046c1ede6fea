"""Generator logic with a fake engine: time budget -> token limit, refusal when it can't fit."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.config import GenerationConfig, TierConfig
from pipelines.errors import StageError
from pipelines.query.generate import EngineOutput, Generator
from tests.fakes import chunk


class WordEngine:
    name, model = "fake", "fake-model"

    def __init__(self) -> None:
        self.max_tokens: list[int] = []
        self.lock = threading.Lock()

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


def test_a_request_that_waited_out_its_budget_is_dropped_without_generating():
    g, engine = generator()
    engine.lock.acquire()  # another generation is running
    t0 = time.monotonic()
    with pytest.raises(StageError, match="stayed busy for the whole 300 ms budget"):
        g.generate("small", "What is X?", [chunk(0, "X.")], budget_ms=300)
    assert 0.25 < time.monotonic() - t0 < 0.6 and engine.max_tokens == []


def test_waiting_for_the_engine_shrinks_the_token_limit():
    g, engine = generator()
    engine.lock.acquire()
    threading.Timer(0.5, engine.lock.release).start()
    g.generate("small", "What is X?", [chunk(0, "X is a thing.")], budget_ms=3000, received_at=time.monotonic())
    (limit,) = engine.max_tokens
    # ~2.5 s left after the wait, minus ~0.2 s prefill and 0.2 s margin: ~105 tokens at 50 tok/s
    assert 90 <= limit <= 115
