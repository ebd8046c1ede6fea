"""Measured throughput: the prior, warm-up calibration, updates from answers, and token limits."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipelines.engines.load import Capacity
from pipelines.config import GenerationConfig, TierConfig
from pipelines.engines import Chunk, Final
from pipelines.engines.throughput import Throughput
from pipelines.query.generate import SAFETY_MARGIN_S, Generator
from tests.fakes import chunk


def test_the_prior_is_used_until_something_is_measured():
    t = Throughput(100.0, 20.0)
    assert t.rates().source == "configured" and t.seconds(200, 40) == pytest.approx(4.0)


def test_warm_up_replaces_the_prior():
    t = Throughput(100.0, 20.0)
    t.calibrate(300.0, 0.0)  # decode not measured: its prior stays
    r = t.rates()
    assert (r.prefill_tok_s, r.decode_tok_s, r.source) == (300.0, 20.0, "warm-up")


def test_answers_move_the_estimate_towards_what_they_took():
    t = Throughput(100.0, 20.0)
    for _ in range(20):
        t.observe(prompt_tokens=500, ttft_s=1.0, answer_tokens=51, latency_s=6.0)  # 500 tok/s, 10 tok/s
    r = t.rates()
    assert r.prefill_tok_s == pytest.approx(500, rel=0.01) and r.decode_tok_s == pytest.approx(10, rel=0.01)
    assert r.source == "measured" and r.samples == 20


def test_too_short_observations_are_ignored():
    t = Throughput(100.0, 20.0)
    t.observe(prompt_tokens=10, ttft_s=0.001, answer_tokens=2, latency_s=0.002)
    t.observe(prompt_tokens=10, ttft_s=None, answer_tokens=0, latency_s=0.5)
    assert t.rates().samples == 0 and t.prefill_tok_s == 100.0


def test_rates_must_be_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        Throughput(0.0, 10.0)


class SlowEngine:
    """Takes ``ttft`` seconds to the first token, then ``per_token`` per token; one at a time."""

    name, model = "fake", "fake-model"

    def __init__(self, ttft: float, per_token: float, warmup_rates=None) -> None:
        self.ttft, self.per_token = ttft, per_token
        self.concurrency = asyncio.Semaphore(1)
        self.max_tokens: list[int] = []
        if warmup_rates:
            self.warmup_rates = warmup_rates

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def stream(self, messages, sampling):
        self.max_tokens.append(sampling.max_tokens)
        await asyncio.sleep(self.ttft)
        n = min(sampling.max_tokens, 30)
        for i in range(n):
            if i:
                await asyncio.sleep(self.per_token)
            yield Chunk(text=" w")
        yield Chunk(final=Final("stop", 100, n))

    async def close(self) -> None:
        pass


def generator(engine, prefill=1000.0, decode=1000.0, admission=True) -> Generator:
    tier = TierConfig("small", "llamacpp", "smollm2-135m-instruct", 2048, 160, prefill_tok_s=prefill,
                      decode_tok_s=decode)
    return Generator(GenerationConfig(tiers={"small": tier}, threads=1, admission=admission),
                     engines={"small": engine})


def test_the_engines_warm_up_measurement_sets_the_token_limit_from_the_start():
    g = generator(SlowEngine(0.0, 0.0, warmup_rates=(100.0, 10.0)))
    assert g.rates()["small"].source == "warm-up"
    tier = g.cfg.tiers["small"]
    assert g.token_limit(tier, 100, 3000) == int((3.0 - 1.0 - SAFETY_MARGIN_S) * 10)


def test_a_slower_machine_than_configured_gets_answers_that_fit_after_one_request():
    # Configured at 1000 tok/s both ways, the engine really decodes ~20 tok/s.
    engine = SlowEngine(ttft=0.1, per_token=0.05)
    g = generator(engine, admission=False)
    sources = [chunk(0, "X is a thing.")]
    first = asyncio.run(g.generate("small", "What is X?", sources, budget_ms=1000))
    assert first.finish_reason == "deadline" and first.decode_tok_s < 100  # the record reports the update
    second = asyncio.run(g.generate("small", "What is X?", sources, budget_ms=1000))
    assert second.finish_reason == "length" and second.tokens_out <= 16 and second.latency_ms < 1000
    # with admission (the default), the measured rates refuse it at once instead: its expected
    # answer (48 tokens at ~20 tok/s) cannot finish in 1 s, and a cut answer is worth less than a fallback
    g = generator(SlowEngine(ttft=0.1, per_token=0.05))
    asyncio.run(g.generate("small", "What is X?", sources, budget_ms=1000))
    t0 = time.monotonic()
    with pytest.raises(Capacity):
        asyncio.run(g.generate("small", "What is X?", sources, budget_ms=1000))
    assert time.monotonic() - t0 < 0.05


class MeasuringEngine(SlowEngine):
    def measure(self):
        return 400.0, 40.0


def test_remeasure_replaces_a_warm_up_taken_under_load():
    g = generator(MeasuringEngine(0.0, 0.0, warmup_rates=(30.0, 10.0)))
    assert g.rates()["small"].prefill_tok_s == 30.0
    rates = asyncio.run(g.remeasure())
    assert (rates["small"].prefill_tok_s, rates["small"].decode_tok_s) == (400.0, 40.0)
