"""Generator logic with a fake engine: time budget -> token limit, refusal when it can't fit,
queueing with the deadline, confidence and cost, and stopping an engine at the deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import BadRequest, ConfigError, StageError
from common.records import TierAnswer
from pipelines.config import GenerationConfig, TierConfig
from pipelines.engines import Chunk, Final
from pipelines.engines.load import Capacity
from pipelines.query.generate import Delta, Generator, confidence
from tests.fakes import chunk


class WordEngine:
    """Streams ``words`` one per ``delay`` seconds with log-probabilities; one request at a time."""

    name, model = "fake", "fake-model"

    def __init__(self, words: list[str] | None = None, delay: float = 0.0) -> None:
        self.max_tokens: list[int] = []
        self.words = words or ["ok", " [1]"]
        self.delay = delay
        self.concurrency = asyncio.Semaphore(1)
        self.stopped_early = False

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def stream(self, messages, sampling):
        self.max_tokens.append(sampling.max_tokens)
        sent = 0
        try:
            for i, word in enumerate(self.words[: sampling.max_tokens]):
                await asyncio.sleep(self.delay)
                sent += 1
                yield Chunk(text=word, logprobs=(-0.5 * (i + 1),))
            yield Chunk(final=Final("stop", 10, sent))
        finally:
            self.stopped_early = sent < len(self.words)

    async def close(self) -> None:
        pass


def generator(engine: WordEngine | None = None, admission: bool = False, **tier) -> tuple[Generator, WordEngine]:
    """Admission off by default: these tests are about the token limit a budget becomes
    (tests/unit/test_admission.py has admission's)."""
    base = dict(name="small", engine="llamacpp", model="smollm2-135m-instruct", context_tokens=2048,
                max_tokens=160, prefill_tok_s=100.0, decode_tok_s=50.0, price_in=2.0, price_out=10.0)
    cfg = GenerationConfig(tiers={"small": TierConfig(**{**base, **tier})}, threads=1, admission=admission)
    engine = engine or WordEngine()
    return Generator(cfg, engines={"small": engine}), engine


def run(coro):
    return asyncio.run(coro)


def test_no_budget_means_the_tier_limit():
    g, engine = generator()
    run(g.generate("small", "What is X?", [chunk(0, "X is a thing.")]))
    assert engine.max_tokens == [160]


def test_budget_becomes_a_token_limit():
    # 300 words at ~100/s would take 3 s; the budget leaves ~1.8 s of decoding at the 50 tok/s rate
    g, engine = generator(WordEngine(["w"] * 300, delay=0.01))
    out = run(g.generate("small", "What is X?", [chunk(0, "X is a thing.")], budget_ms=2000))
    assert engine.max_tokens == [160]  # the engine may go to the tier's limit; the time limit is ours
    assert out.finish_reason == "length" and out.tokens_out == pytest.approx((2.0 - 0.2) * 50, abs=6)


def test_the_token_limit_is_set_again_from_the_time_left_after_the_prompt():
    # The prefill estimate (100 tok/s) says the ~60-token prompt takes 0.6 s; it really takes 0.01 s,
    # so the answer may use the time the estimate had reserved for the prompt.
    g, engine = generator(WordEngine(["w"] * 300, delay=0.01))
    _, prompt_tokens = g.messages("small", "What is X?", [chunk(0, "X is a thing.")], 2000)
    out = run(g.generate("small", "What is X?", [chunk(0, "X is a thing.")], budget_ms=2000))
    assert out.tokens_out > (2.0 - prompt_tokens / 100 - 0.2) * 50 + 10


def test_too_little_time_is_refused_at_once():
    g, engine = generator(admission=True)  # the estimate (the prompt and the expected answer) does not fit
    with pytest.raises(Capacity, match="capacity: would finish in ~2.3 s, 1.5 s left"):
        run(g.generate("small", "What is X?", [chunk(0, " ".join(["word"] * 100))], budget_ms=1500))
    assert engine.max_tokens == []
    g, engine = generator(admission=False)  # without it, the token limit's own check after the wait
    with pytest.raises(StageError, match="not enough for a"):
        run(g.generate("small", "What is X?", [chunk(0, " ".join(["word"] * 100))], budget_ms=1000))
    assert engine.max_tokens == []


def test_unknown_tier_is_a_bad_request_naming_the_valid_ones():
    g, _ = generator()
    with pytest.raises(BadRequest, match="'xl' is not a configured tier; valid: small"):
        run(g.generate("xl", "What is X?", []))


def test_a_request_that_waited_out_its_budget_is_dropped_without_generating():
    # the engine is busy with work admission does not see (a re-measurement, or admission off)
    g, engine = generator(admission=False)

    async def scenario():
        await engine.concurrency.acquire()  # another generation is running
        t0 = time.monotonic()
        with pytest.raises(StageError, match="stayed busy with other requests for the whole 1500 ms budget"):
            await g.generate("small", "What is X?", [chunk(0, "X.")], budget_ms=1500)
        return time.monotonic() - t0

    # it gives up QUEUE_MARGIN_S (0.5 s) before its deadline: the caller hears why, rather than
    # timing out without a word (which it would take for a stuck worker and skip the tier)
    waited = run(scenario())
    assert 0.9 < waited < 1.3 and engine.max_tokens == [], waited


def test_waiting_for_the_engine_shrinks_the_token_limit():
    g, engine = generator(WordEngine(["w"] * 300, delay=0.005))

    async def scenario():
        await engine.concurrency.acquire()
        asyncio.get_running_loop().call_later(0.5, engine.concurrency.release)
        return await g.generate("small", "What is X?", [chunk(0, "X is a thing.")], budget_ms=3000,
                                received_at=time.monotonic())

    out = run(scenario())
    # ~2.5 s left after the wait, minus the 0.2 s margin, at 50 tok/s: ~115 tokens
    assert out.finish_reason == "length" and 100 <= out.tokens_out <= 120


def test_stream_yields_deltas_then_a_record_with_confidence_and_cost():
    g, _ = generator(WordEngine(["Paris", " is", " the", " capital", " [1]"]))

    async def collect():
        return [item async for item in g.stream("small", "Capital of France?", [chunk(0, "Paris.")])]

    items = run(collect())
    progress, deltas, final = items[0], items[1:-1], items[-1]
    # the prompt (as counted here) is spent before the first word
    assert progress.text == "" and progress.tokens_in > 0 and progress.tokens_out == 0
    assert [d.text for d in deltas] == ["Paris", " is", " the", " capital", " [1]"]
    assert [d.tokens_out for d in deltas] == [1, 2, 3, 4, 5] and {d.tokens_in for d in deltas} == {progress.tokens_in}
    assert all(isinstance(d, Delta) for d in deltas) and isinstance(final, TierAnswer)
    assert final.text == "Paris is the capital [1]" and final.finish_reason == "stop"
    assert (final.tokens_in, final.tokens_out) == (10, 5)
    assert final.logprob_mean == pytest.approx(-1.5) and final.logprob_min == pytest.approx(-2.5)
    assert final.cost_usd == pytest.approx((10 * 2.0 + 5 * 10.0) / 1e6)
    assert final.ttft_ms is not None and final.ttft_ms <= final.latency_ms


def test_decoding_stops_at_the_deadline():
    g, engine = generator(WordEngine(["w"] * 100, delay=0.05), decode_tok_s=1000.0)
    t0 = time.monotonic()
    out = run(g.generate("small", "Q?", [chunk(0, "X.")], budget_ms=1000))
    # the rate estimate (1000 tok/s) is far off: the answer's own pace (20 words/s) stops it before
    # the 1 s deadline (the next word would pass it), not after it and not at the 5 s the words take
    elapsed = time.monotonic() - t0
    assert out.finish_reason == "deadline" and 0.5 < elapsed < 1.0, elapsed
    assert engine.stopped_early and 8 < out.tokens_out < 20


def test_confidence_of_no_logprobs_is_unknown():
    assert confidence([]) == (None, None)
    assert confidence([-1.0, -3.0]) == (-2.0, -3.0)


def test_decoding_stops_after_three_sentences_not_at_a_version_number():
    words = ["Python", " 3.", "10", " added it.", " It is", " useful.", " See", " also", " this.", " And", " more."]
    g, engine = generator(WordEngine(words))
    out = run(g.generate("small", "What is X?", [chunk(0, "X.")]))
    assert out.text == "Python 3.10 added it. It is useful. See also this." and out.finish_reason == "stop"
    assert engine.stopped_early


def test_a_lead_in_pointing_at_the_sources_is_neither_streamed_nor_kept():
    words = ["According", " to", " [", "2", "],", " Paris", " is", " the", " capital", "."]
    g, _ = generator(WordEngine(words))

    async def collect():
        return [item async for item in g.stream("small", "Capital of France?", [chunk(0, "X."), chunk(1, "Paris.")])]

    items = run(collect())
    streamed = "".join(d.text for d in items[:-1])
    assert streamed == items[-1].text == "Paris is the capital. [2]"
    assert items[-1].tokens_out == len(words)  # the model's tokens are still what was spent


def test_an_extractive_tier_answers_with_the_sources_best_sentence_cited_and_no_model():
    from pipelines.config import GenerationConfig as G

    cfg = G.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_SMALL_ENGINE": "extractive"})
    small = cfg.tiers["small"]
    assert (small.engine, small.model, small.price_in, small.price_out) == ("extractive", "extractive", 0.0, 0.0)
    g = Generator(G(tiers={"small": small}, threads=1))  # loads no model: the engine has none
    sources = [chunk(0, "Lists are mutable. A tuple is an immutable sequence. Tuples use parentheses.", "Sequences"),
               chunk(1, "Dictionaries map keys to values.", "Mappings")]
    out = run(g.generate("small", "What is a tuple?", sources, budget_ms=1000))
    assert out.text == "A tuple is an immutable sequence. [1]"
    assert out.engine == "extractive" and out.finish_reason == "stop" and out.cost_usd == 0.0
    assert out.tokens_out == 7 and out.logprob_mean is None


def test_an_extractive_tier_with_a_model_name_is_refused_naming_the_variable():
    from pipelines.config import GenerationConfig as G

    cfg = G.from_env({"RAGROUTE_SMALL_ENGINE": "extractive", "RAGROUTE_SMALL_MODEL": "smollm2-135m-instruct"})
    with pytest.raises(ConfigError, match="RAGROUTE_SMALL_MODEL"):
        Generator(cfg)
