"""Deadline-aware admission (issue 41), as logic: the load tracker's estimates and refusals (a
fake clock), the generator refusing at once what cannot finish (a fake engine), and the query
path turning refusals into an immediate extract, or a 503 with Retry-After when the client
asked for no degraded answer."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import Overloaded
from pipelines.api.schema import RagRequest
from pipelines.config import CacheConfig, GenerationConfig, RagConfig, TierConfig
from pipelines.config.budget import BudgetProfile
from pipelines.engines import Chunk, Final
from pipelines.engines.load import Capacity, Pool, TierLoad
from pipelines.engines.throughput import Throughput
from pipelines.query.generate import Generator
from pipelines.query.pipeline import QueryPipeline
from tests.fakes import FakeStages, chunk, unit


def test_the_estimate_counts_the_running_request_and_the_queue():
    now = [0.0]
    load = TierLoad("large", Throughput(100.0, 20.0), serial=True, max_queue=2, clock=lambda: now[0])
    first = load.admit(400, 96, left_s=12.0)  # 4 s prefill + 48 tokens at 20/s = 6.4 s
    load.start(first)
    now[0] = 3.0
    assert load.wait_s() == pytest.approx(3.4)  # what is left of the running one
    second = load.admit(400, 96, left_s=12.0)  # 3.4 + 6.4 = 9.8 s: fits
    assert load.wait_s() == pytest.approx(9.8) and load.snapshot()["waiting"] == 1
    with pytest.raises(Capacity, match="would finish in ~16.2 s, 12.0 s left") as info:
        load.admit(400, 96, left_s=12.0)
    assert info.value.wait_s == pytest.approx(9.8) and info.value.status == 503
    assert load.admit(100, 96, left_s=None)  # no deadline: queued
    with pytest.raises(Capacity, match="the tier is full"):
        load.admit(10, 8, left_s=None)  # 2 waiting: full
    now[0] = 4.0  # the first finished after 4 s on the engine, with a 20-token answer
    load.done(first, answer_tokens=20)
    assert load.expected_answer == pytest.approx(48 + 0.3 * (20 - 48))
    assert load.wait_s() == pytest.approx(6.4 + 3.4)  # the two waiting, as estimated when they came
    load.done(second)
    assert load.admit(400, 96, left_s=None).answer_tokens == pytest.approx(39.6)  # a new one: the shorter answers
    assert load.snapshot()["waiting"] == 2 and load.snapshot()["running"] == 0


def test_a_request_running_past_its_estimate_counts_until_its_deadline():
    """Seen under a sustained burst: a generation slowed by the other stages' work ran past its
    estimate; counted as nearly done, it let requests in behind it that then waited out their
    budgets for the engine. It ends at its deadline at the latest: that is what is left."""
    now = [0.0]
    load = TierLoad("large", Throughput(100.0, 20.0), serial=True, max_queue=4, clock=lambda: now[0])
    running = load.admit(400, 96, left_s=15.0)  # 6.4 s expected; cut at 15 s at the latest
    load.start(running)
    now[0] = 9.0  # 2.6 s past its estimate
    assert load.wait_s() == pytest.approx(6.0)  # until its deadline, not 10% of its work
    with pytest.raises(Capacity, match="would finish in ~12.4 s, 12.0 s left"):
        load.admit(400, 96, left_s=12.0)
    assert load.admit(400, 96, left_s=13.0)  # 6 + 6.4 fits 13 s


def test_estimates_follow_how_much_longer_than_estimated_requests_held_the_processor():
    """Under a burst the other services take cores from the engine between answers: requests
    held it longer than their tokens at the tier's rates say. Estimates are scaled by that
    slowdown (at most 2x), which relaxes back while the processor is idle."""
    now = [0.0]
    load = TierLoad("large", Throughput(100.0, 20.0), serial=True, max_queue=4, clock=lambda: now[0])
    for _ in range(6):
        ticket = load.admit(400, 96, left_s=16.0)  # 4 s + 48/20 s = 6.4 s at the rates
        load.start(ticket)
        now[0] += 9.6  # held 1.5x as long, for an answer of the expected length
        load.done(ticket, answer_tokens=48)
    assert load.pool.slowdown(now[0]) == pytest.approx(1.5, abs=0.1)
    with pytest.raises(Capacity, match=r"would finish in ~9\.[0-9] s, 9.0 s left"):
        load.admit(400, 96, left_s=9.0)  # 6.4 s at the rates would fit; ~9.6 s does not
    now[0] += 120.0  # idle for four half-lives: nearly back to the rates
    assert load.pool.slowdown(now[0]) < 1.05
    assert load.admit(400, 96, left_s=9.0)
    longer = TierLoad("small", Throughput(100.0, 20.0), serial=True, max_queue=4, clock=lambda: now[0])
    ticket = longer.admit(400, 96, left_s=16.0)
    longer.start(ticket)
    now[0] += 8.8  # a longer answer than expected (96 tokens: 8.8 s at the rates) is no slowdown
    longer.done(ticket, answer_tokens=96)
    assert longer.pool.slowdown(now[0]) == pytest.approx(1.0)


def test_an_idle_tier_whose_answers_were_cut_at_their_budget_is_still_admitted():
    """Seen on a slow machine: answers cut at a 12 s budget made "time on the engine" 12 s, and
    the idle tier then refused every request, for good ("would finish in ~12.0 s, 12.0 s left
    (0 ahead)"). The estimate is the request's own tokens at the tier's rates."""
    now = [0.0]
    rates = Throughput(100.0, 20.0, clock=lambda: now[0])
    rates.calibrate(100.0, 20.0)
    load = TierLoad("large", rates, serial=True, max_queue=4, clock=lambda: now[0])
    for _ in range(3):
        ticket = load.admit(400, 96, left_s=12.0)
        load.start(ticket)
        now[0] += 12.0  # ran until its budget: 400 prompt tokens in 4 s, then 160 tokens in 8 s
        rates.observe(prompt_tokens=400, ttft_s=4.0, answer_tokens=161, latency_s=12.0)
        load.done(ticket, answer_tokens=161)
    assert load.admit(300, 96, left_s=12.0)  # 3 s + 96 tokens at 20/s = 7.8 s: fits


def test_rates_slowed_by_a_burst_relax_back_to_the_warm_up_while_idle():
    now = [0.0]
    rates = Throughput(100.0, 20.0, clock=lambda: now[0])
    rates.calibrate(100.0, 20.0)
    for _ in range(5):  # a burst: everything at a third of the warm-up rates
        rates.observe(prompt_tokens=300, ttft_s=9.0, answer_tokens=21, latency_s=12.0)
    slow = rates.prefill_tok_s
    assert slow < 50
    now[0] += 30.0  # one half-life later, no answer in between
    assert rates.prefill_tok_s == pytest.approx(100 - (100 - slow) / 2)
    now[0] += 300.0
    assert rates.prefill_tok_s == pytest.approx(100.0, rel=0.01) and rates.decode_tok_s == pytest.approx(20.0, rel=0.01)
    fast = Throughput(100.0, 20.0, clock=lambda: now[0])
    fast.calibrate(100.0, 20.0)
    fast.observe(prompt_tokens=400, ttft_s=1.0, answer_tokens=41, latency_s=2.0)
    now[0] += 300.0
    assert fast.prefill_tok_s > 100.0  # faster than the warm-up: kept (nothing to relax from)


def test_tiers_sharing_the_processor_wait_for_each_other():
    now = [0.0]
    cpu = Pool()
    large = TierLoad("large", Throughput(100.0, 20.0), serial=True, max_queue=4, pool=cpu, clock=lambda: now[0])
    small = TierLoad("small", Throughput(300.0, 80.0), serial=True, max_queue=4, pool=cpu, clock=lambda: now[0])
    large.start(large.admit(400, 96, left_s=12.0))  # 6.4 s of work on the cores
    assert small.wait_s() == pytest.approx(6.4)  # the small tier's request would wait for it
    with pytest.raises(Capacity, match="1 ahead"):
        small.admit(400, 96, left_s=7.0)  # 6.4 + ~1.9 s of its own > 7 s
    alone = TierLoad("small", Throughput(300.0, 80.0), serial=True, max_queue=4, clock=lambda: now[0])
    assert alone.wait_s() == 0.0  # a tier with a processor of its own


def test_a_batching_engine_has_no_queue_here():
    load = TierLoad("large", Throughput(100.0, 20.0), serial=False, max_queue=0)
    for _ in range(10):
        load.start(load.admit(100, 96, left_s=5.0))
    assert load.wait_s() == 0.0


class SlowEngine:
    """One request at a time (like llama.cpp), 20 ms a token."""

    name, model = "fake", "fake"

    def __init__(self) -> None:
        self.concurrency = asyncio.Semaphore(1)
        self.started = 0

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    async def stream(self, messages, sampling):
        self.started += 1
        for _ in range(40):
            await asyncio.sleep(0.02)
            yield Chunk(text=" w", logprobs=(-0.1,))
        yield Chunk(final=Final("length", 50, 40))

    async def close(self) -> None:
        pass


def test_a_generation_that_cannot_finish_in_time_is_refused_at_once_and_never_started():
    tier = TierConfig("small", "llamacpp", "smollm2-135m-instruct", 2048, 96, prefill_tok_s=1000.0, decode_tok_s=50.0)
    engine = SlowEngine()
    g = Generator(GenerationConfig(tiers={"small": tier}, threads=1), engines={"small": engine})
    sources = [chunk(0, "X is a thing.")]

    async def scenario():
        running = asyncio.ensure_future(g.generate("small", "What is X?", sources, budget_ms=5000))
        await asyncio.sleep(0.05)  # it holds the engine: ~1 s of work left
        t0 = time.monotonic()
        with pytest.raises(Capacity):
            await g.generate("small", "What is Y?", sources, budget_ms=1200)  # ~1 s wait + ~1 s own > 1.2 s
        refused_in = time.monotonic() - t0
        queued = await g.generate("small", "What is Z?", sources, budget_ms=5000)  # fits behind it
        return await running, queued, refused_in

    first, queued, refused_in = asyncio.run(scenario())
    assert refused_in < 0.05 and engine.started == 2  # refused in milliseconds, never started
    assert first.tokens_out == queued.tokens_out == 40
    assert g.loads["small"].snapshot()["waiting"] == 0 and g.loads["small"].refused == 1


def test_an_answered_request_leaves_the_queue_and_the_engine_before_its_answer_is_returned():
    """Seen in a routed cascade with the real models: the small tier's finished request stayed in
    the queue (its stream was closed only when garbage-collected) and, counted until its deadline,
    made the large tier refuse the escalation ("would finish in ~64 s, 60 s left (1 ahead)")."""
    tier = TierConfig("small", "llamacpp", "smollm2-135m-instruct", 2048, 96, prefill_tok_s=1000.0, decode_tok_s=50.0)
    engine = SlowEngine()
    g = Generator(GenerationConfig(tiers={"small": tier}, threads=1), engines={"small": engine})

    async def scenario():
        answer = await g.generate("small", "What is X?", [chunk(0, "X is a thing.")], budget_ms=5000)
        # at once, with no turn of the event loop in between
        return answer, g.loads["small"].snapshot(), engine.concurrency.locked()

    answer, load, busy = asyncio.run(scenario())
    assert answer.tokens_out == 40 and load["running"] == load["waiting"] == 0 and not busy


CFG = RagConfig(candidates=6, default_tier="small", cache=CacheConfig(threshold=0.95))
BUDGET = BudgetProfile("test", {"cache": 50, "embed": 50, "retrieve": 50, "rerank": 50, "route": 50,
                                "generate": 3000, "safety": 100}, total_ms=5000)


@pytest.fixture
def stages() -> FakeStages:
    s = FakeStages(vectors={"what does with do": unit([1, 0, 0])})
    s.route_score = 0.9  # the router sends it to large
    return s


def test_when_every_tier_is_at_capacity_the_extract_comes_at_once_flagged(stages):
    stages.at_capacity = {"large": 7.5, "small": 2.5}
    pipeline = QueryPipeline(stages, None, CFG, budget=BUDGET)
    t0 = time.monotonic()
    resp = asyncio.run(pipeline.run(RagRequest(query="what does with do")))
    assert time.monotonic() - t0 < 0.5 and resp.degraded and resp.answer
    assert resp.route.model == "extractive" and resp.warnings[-1].startswith("capacity: no tier can answer")
    assert any("capacity: would finish" in w for w in resp.warnings), resp.warnings  # with each tier's estimate
    assert [s.outcome for s in resp.route.path] == ["failed", "failed"]  # large, then small: both refused
    # the extract adds no load to a loaded machine: no sentence embeddings (lexical scores only)
    assert "embed_many" not in stages.calls, stages.calls


def test_a_client_that_wants_no_degraded_answer_gets_a_503_with_retry_after(stages):
    stages.at_capacity = {"large": 7.5, "small": 2.5}
    pipeline = QueryPipeline(stages, None, CFG, budget=BUDGET)
    with pytest.raises(Overloaded) as info:
        asyncio.run(pipeline.run(RagRequest(query="what does with do", allow_degraded=False)))
    assert info.value.status == 503 and info.value.retry_after_s == 3  # the least busy tier: 2.5 s

    async def first_event():
        events = pipeline.stream(RagRequest(query="what does with do", allow_degraded=False, stream=True))
        return await anext(events)  # no meta before the refusal: it is still a 503

    with pytest.raises(Overloaded):
        asyncio.run(first_event())


def test_in_a_burst_the_next_requests_are_refused_from_the_tier_s_last_estimate_without_asking_it(stages, monkeypatch):
    monkeypatch.setattr("pipelines.query.tiers.HINT_S", 0.3)
    stages.at_capacity = {"large": 7.5, "small": 2.5}
    pipeline = QueryPipeline(stages, None, CFG, budget=BUDGET)
    ask = lambda: asyncio.run(pipeline.run(RagRequest(query="what does with do", cache="bypass")))  # noqa: E731
    ask()
    assert stages.calls.count("generate[large]") == stages.calls.count("generate[small]") == 1
    second = ask()  # both tiers refused it a moment ago, estimating 20 s: not asked again
    assert stages.calls.count("generate[large]") == stages.calls.count("generate[small]") == 1
    assert second.route.model == "extractive" and second.warnings[-1].startswith("capacity: no tier can answer")
    assert all("the tier's estimate" in step.reason for step in second.route.path), second.route.path
    time.sleep(0.35)  # the estimate is too old to reuse: the tiers are asked again
    ask()
    assert stages.calls.count("generate[large]") == 2
    stages.capacity_finish_s = 1.0  # a refusal whose estimate would fit a later request (a full queue that drains)
    time.sleep(0.35)
    ask()
    assert stages.calls.count("generate[large]") == 3
    stages.at_capacity = {}
    third = ask()  # the estimate fits the budget: asked, and answered
    assert third.route.tier == "large" and not third.degraded and stages.calls.count("generate[large]") == 4


def test_a_routed_tier_at_capacity_hands_over_to_one_that_is_not_without_degrading(stages):
    # auto: the router chose large; it is too busy to finish in time, so small answers (load-aware routing)
    stages.at_capacity = {"large": 7.5}
    pipeline = QueryPipeline(stages, None, CFG, budget=BUDGET)
    resp = asyncio.run(pipeline.run(RagRequest(query="what does with do", cache="bypass")))
    assert resp.route.tier == "small" and resp.answer == "the text of the chunk [1]" and not resp.degraded
    assert [(s.tier, s.outcome) for s in resp.route.path] == [("large", "failed"), ("small", "answered")]
    assert any(w.startswith("load: generate[large] stage failed: capacity") for w in resp.warnings), resp.warnings
    # a tier the client asked for by name is another matter: its answer from another tier is degraded
    named = asyncio.run(pipeline.run(RagRequest(query="what does with do", tier="large", cache="bypass")))
    assert named.route.tier == "small" and named.degraded
    assert any("fell back to the small tier" in w for w in named.warnings), named.warnings


def test_tiers_that_share_the_processor_take_turns_on_it(monkeypatch):
    """The llama.cpp tiers of one Generation service get one Processor: a request for small waits
    while large decodes (two models at once on the same cores slowed the running answer past its
    budget), and the admission queue they share describes that wait."""
    from pipelines import engines as registry
    from pipelines.engines.base import Processor

    given: list[Processor] = []
    running, most = [0], [0]

    class TurnEngine(SlowEngine):
        def __init__(self, processor: Processor) -> None:
            super().__init__()
            self.concurrency = processor.slot

        async def stream(self, messages, sampling):
            running[0] += 1
            most[0] = max(most[0], running[0])
            try:
                async for c in super().stream(messages, sampling):
                    yield c
            finally:
                running[0] -= 1

    def load(tier, threads, processor=None):
        given.append(processor)
        return TurnEngine(processor)

    monkeypatch.setitem(registry.ENGINES, "llamacpp", load)
    monkeypatch.setattr("pipelines.query.generate.ENGINES", registry.ENGINES)
    tiers = {name: TierConfig(name, "llamacpp", "smollm2-135m-instruct", 2048, 96, prefill_tok_s=1000.0,
                              decode_tok_s=50.0) for name in ("small", "large")}
    g = Generator(GenerationConfig(tiers=tiers, threads=1))
    assert len(given) == 2 and given[0] is given[1] is not None  # one processor for both tiers
    sources = [chunk(0, "X is a thing.")]

    async def scenario():
        return await asyncio.gather(g.generate("large", "What is X?", sources, budget_ms=5000),
                                    g.generate("small", "What is Y?", sources, budget_ms=5000))

    t0 = time.monotonic()
    large, small = asyncio.run(scenario())
    assert most[0] == 1 and time.monotonic() - t0 >= 2 * 40 * 0.02  # one after the other
    assert large.tokens_out == small.tokens_out == 40


def test_a_tier_that_timed_out_is_skipped_at_once_then_probed(stages, monkeypatch):
    monkeypatch.setattr("pipelines.query.tiers.STALL_S", 0.5)
    stages.delays["generate[large]"] = 10  # a stuck worker: no word within the budget
    budget = BudgetProfile("test", {**BUDGET.stages_ms, "generate": 200}, total_ms=2000)
    pipeline = QueryPipeline(stages, None, CFG, budget=budget)
    first = asyncio.run(pipeline.run(RagRequest(query="what does with do", cache="bypass")))
    assert first.route.tier == "small" and "exceeded" in " ".join(first.warnings)  # one budget lost, once
    t0 = time.monotonic()
    second = asyncio.run(pipeline.run(RagRequest(query="what does with do", cache="bypass")))
    assert time.monotonic() - t0 < 0.15 and second.route.tier == "small"
    assert any("skipped for" in w for w in second.warnings)  # seen as full: not asked
    del stages.delays["generate[large]"]
    time.sleep(0.6)  # the stall period (STALL_S, 10 s; 0.5 s here) is over: one request probes, the tier is back
    third = asyncio.run(pipeline.run(RagRequest(query="what does with do", cache="bypass")))
    assert third.route.tier == "large" and not third.degraded
