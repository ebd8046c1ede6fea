"""Generate stage: tier -> engine + model, within the request's deadline.

:class:`Generator` holds one engine per tier (pipelines/engines) and turns (tier, question,
sources) into a stream of text deltas followed by one :class:`TierAnswer` record: text,
finish reason, tokens in/out, confidence (mean and min token log-probability), time to first
token, latency and estimated cost.

The deadline counts from when the request reached the Generation service: waiting for a busy
engine counts against it, a request whose time runs out in the queue is dropped without
generating, the token limit comes from the time left once the engine is free and the tier's
*measured* prefill and decode rates (pipelines/engines/throughput.py: the engine's warm-up
measurement, then a moving average over real answers; the configured rates are only the prior),
and decoding stops at the deadline (finish reason ``deadline``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from common.errors import BadRequest, ConfigError, StageError
from common.records import ScoredChunk, TierAnswer
from pipelines import models
from pipelines.config import GenerationConfig, TierConfig
from pipelines.engines import ENGINES, Engine, Processor, Sampling
from pipelines.engines.load import Pool, Ticket, TierLoad
from pipelines.engines.throughput import Rates, Throughput
from pipelines.query.leadin import LeadIn
from pipelines.query.prompt import STOP, build_messages

log = logging.getLogger(__name__)

MIN_ANSWER_TOKENS = 8
SAFETY_MARGIN_S = 0.2
QUEUE_MARGIN_S = 0.5  # a request still waiting for its engine this close to its deadline gives up
PROMPT_TIME_SHARE = 0.5  # a prompt's prefill may take at most this share of the time left
MIN_SOURCE_TOKENS = 64
# Answers are asked for in one or two sentences; decoding stops after this many (small models
# otherwise go on repeating themselves until the token limit).
MAX_SENTENCES = 3
_NOT_AN_END = re.compile(r"(\d|\b[A-Za-z]|\be\.g|\bi\.e|\betc|\bvs)\.$")  # 3.10, e.g., a single letter


def ends_sentence(delta: str, parts: Sequence[str]) -> bool:
    """Whether the answer so far (``parts``, ending with ``delta``) ends a sentence."""
    if not delta.rstrip().endswith((".", "!", "?")):
        return False
    tail = "".join(parts[-4:]).rstrip()
    return not (tail.endswith(".") and _NOT_AN_END.search(tail))


@dataclass(frozen=True)
class Delta:
    """Text of a streamed answer. ``tokens_in``/``tokens_out``: what the generation has cost so
    far (its prompt, the tokens decoded up to here); 0 where unknown (a cached or quoted text).
    A Delta with no text reports progress only (the prompt is in; tokens held back)."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0


def check_config(cfg: GenerationConfig) -> None:
    """Fail at start-up, naming the key, for a model the tier's engine can't load (unknown
    engines are refused when the config is read)."""
    for tier in cfg.tiers.values():
        key = f"RAGROUTE_{tier.name.upper()}"
        if tier.engine == "llamacpp" and tier.model not in models.GGUF_MODELS:
            raise ConfigError(f"{key}_MODEL={tier.model!r} is not a packaged GGUF model; valid for llamacpp: "
                              f"{', '.join(models.GGUF_MODELS)}")
        if tier.engine == "extractive" and tier.model != "extractive":
            raise ConfigError(f"{key}_MODEL={tier.model!r}: the extractive engine has no model (leave it unset)")


def confidence(logprobs: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, min) token log-probability of an answer; None when the engine reported none."""
    if not logprobs:
        return None, None
    return sum(logprobs) / len(logprobs), min(logprobs)


class Generator:
    def __init__(self, cfg: GenerationConfig, engines: dict[str, Engine] | None = None,
                 on_spent: Callable[[str, int, int], None] | None = None) -> None:
        """``on_spent(tier, prompt_tokens, answer_tokens)``: after every generation that reached
        its engine, finished, cut or abandoned by its caller (the service counts it on /metrics)."""
        check_config(cfg)
        self.cfg = cfg
        self.on_spent = on_spent or (lambda tier, tokens_in, tokens_out: None)
        # The llama.cpp tiers take turns on this machine's cores (engines/base.py: Processor).
        processor = Processor()
        self.engines = engines or {name: ENGINES[t.engine](t, cfg.threads, processor) for name, t in cfg.tiers.items()}
        self.throughput = {name: Throughput(t.prefill_tok_s, t.decode_tok_s) for name, t in cfg.tiers.items()}
        for name, engine in self.engines.items():
            measured = getattr(engine, "warmup_rates", None)  # (prefill, decode) tok/s, from the engine's warm-up
            if measured:
                self.throughput[name].calibrate(*measured)
                log.info("tier %s: measured %.0f tok/s prefill, %.1f tok/s decode at warm-up", name, *measured)
        # deadline-aware admission per tier (pipelines/engines/load.py); none for an engine that
        # reads the sources itself (extractive: milliseconds, the fallback of last resort)
        # The llama.cpp tiers share this machine's cores (they take turns): one queue for all of them.
        cpu = Pool()
        self.loads: dict[str, TierLoad] = {} if not cfg.admission else {
            name: TierLoad(name, self.throughput[name], serial=engine.concurrency is not None,
                           max_queue=cfg.tiers[name].max_queue,
                           expected_answer_tokens=min(float(cfg.tiers[name].max_tokens), 48.0),
                           pool=cpu if engine.name == "llamacpp" else None)
            for name, engine in self.engines.items() if not getattr(engine, "reads_sources", False)}

    async def remeasure(self) -> dict[str, Rates]:
        """Measure again, now, each tier whose engine can (llama.cpp): the warm-up at load may have
        shared the CPU with the other services starting (seen: 32 tok/s prefill instead of ~200
        while the demo index was built). Waits for the engine like a request does."""
        for name, engine in self.engines.items():
            measure = getattr(engine, "measure", None)
            if measure is None:
                continue
            async with contextlib.AsyncExitStack() as stack:
                if engine.concurrency is not None:
                    await engine.concurrency.acquire()
                    stack.callback(engine.concurrency.release)
                prefill, decode = await asyncio.to_thread(measure)
            self.throughput[name].calibrate(prefill, decode)
            log.info("tier %s: measured %.0f tok/s prefill, %.1f tok/s decode (re-measured)", name, prefill, decode)
        return self.rates()

    def rates(self) -> dict[str, Rates]:
        """Each tier's current prefill/decode estimate (what token limits are computed from)."""
        return {name: t.rates() for name, t in self.throughput.items()}

    def token_limit(self, tier: TierConfig, prompt_tokens: int, budget_ms: float | None) -> int:
        """The answer length that fits the time budget: (budget - prefill - margin) x decode rate,
        at the tier's measured rates."""
        if budget_ms is None:
            return tier.max_tokens
        rates = self.throughput[tier.name]
        seconds = budget_ms / 1000 - prompt_tokens / rates.prefill_tok_s - SAFETY_MARGIN_S
        return min(tier.max_tokens, int(seconds * rates.decode_tok_s))

    def _engine(self, tier: str) -> tuple[Engine, TierConfig]:
        if tier not in self.engines:
            raise BadRequest("tier", f"{tier!r} is not a configured tier; valid: {', '.join(self.engines)}")
        return self.engines[tier], self.cfg.tiers[tier]

    def messages(self, tier: str, question: str, sources: Sequence[ScoredChunk],
                 budget_ms: float | None = None) -> tuple[list[dict[str, str]], int]:
        """The prompt for ``tier`` and its token count. Its source text is the tier's
        ``source_tokens`` at most, and with a time budget at most what PROMPT_TIME_SHARE of it
        prefills at the measured rate (a slow machine gets a shorter context, not a timeout)."""
        engine, tier_cfg = self._engine(tier)
        source_tokens = tier_cfg.source_tokens
        if budget_ms is not None:
            affordable = budget_ms / 1000 * PROMPT_TIME_SHARE * self.throughput[tier].prefill_tok_s
            source_tokens = max(MIN_SOURCE_TOKENS, min(source_tokens, int(affordable)))
        messages = build_messages(question, sources, prompt_tokens=tier_cfg.context_tokens - tier_cfg.max_tokens,
                                  count_tokens=engine.count_tokens, source_tokens=source_tokens)
        return messages, sum(engine.count_tokens(m["content"]) for m in messages)

    async def stream(self, tier: str, question: str, sources: Sequence[ScoredChunk], budget_ms: float | None = None,
                     received_at: float | None = None) -> AsyncIterator[Delta | TierAnswer]:
        """Text deltas, then one TierAnswer record. ``budget_ms`` counts from ``received_at``
        (time.monotonic(); default now)."""
        engine, tier_cfg = self._engine(tier)
        deadline = None if budget_ms is None else (received_at or time.monotonic()) + budget_ms / 1000
        load = self.loads.get(tier)
        ticket = None
        if load is not None:  # refused here, at once, when it cannot finish in time (Capacity)
            left_s = None if deadline is None else deadline - time.monotonic()
            _, prompt_estimate = self.messages(tier, question, sources, None if left_s is None else left_s * 1000)
            ticket = load.admit(prompt_estimate, tier_cfg.max_tokens, left_s)
        try:
            async for item in self._stream(engine, tier_cfg, question, sources, budget_ms, deadline, load, ticket):
                if isinstance(item, TierAnswer) and ticket is not None:
                    load.done(ticket, item.tokens_out)  # the work is done: out of the queue before it is handed on
                    ticket = None
                yield item
        finally:
            if ticket is not None:  # failed or abandoned
                load.done(ticket)

    async def _stream(self, engine: Engine, tier_cfg: TierConfig, question: str, sources: Sequence[ScoredChunk],
                      budget_ms: float | None, deadline: float | None, load: TierLoad | None,
                      ticket: Ticket | None) -> AsyncIterator[Delta | TierAnswer]:
        tier = tier_cfg.name
        async with contextlib.AsyncExitStack() as stack:
            if engine.concurrency is not None:
                # Give up a little before the deadline: the caller then hears that the engine was
                # busy (a queue that ran slower than its estimate) rather than timing out without a
                # word, which it would take for a stuck worker (pipelines/query/tiers.py).
                wait = None if deadline is None else max(0.0, deadline - time.monotonic() - QUEUE_MARGIN_S)
                try:
                    await asyncio.wait_for(engine.concurrency.acquire(), wait)
                except TimeoutError:
                    raise StageError(f"generate[{tier}]", f"the engine stayed busy with other requests for the "
                                                          f"whole {budget_ms:.0f} ms budget") from None
                stack.callback(engine.concurrency.release)
            if ticket is not None:
                load.start(ticket)
            left_ms = None if deadline is None else (deadline - time.monotonic()) * 1000
            messages, prompt_tokens = self.messages(tier, question, sources, left_ms)
            limit = self.token_limit(tier_cfg, prompt_tokens, left_ms)
            if limit < MIN_ANSWER_TOKENS:
                # Refuse at once: the caller falls back (another tier, an extractive answer).
                rates = self.throughput[tier].rates()
                raise StageError(f"generate[{tier}]", f"{left_ms:.0f} ms left is not enough for a {prompt_tokens}-"
                                 f"token prompt and an answer at ~{rates.prefill_tok_s:.0f}/"
                                 f"{rates.decode_tok_s:.0f} tok/s ({rates.source})")
            started = time.perf_counter()
            ttft: float | None = None
            parts: list[str] = []  # what the model said
            shown: list[str] = []  # what the caller gets: the same, minus a lead-in ("According to [1], ")
            lead_in = LeadIn(s.chunk.title for s in sources)
            logprobs: list[float] = []
            final = None
            sentences = 0
            # The engine may decode up to the tier's limit; the time limit is enforced here, and
            # set again once the prompt is in, from the time really left (a prefill estimate that
            # was off then costs nothing).
            sampling = Sampling(tier_cfg.max_tokens, tier_cfg.temperature, tier_cfg.top_p, STOP)
            # An engine without a model (extractive) answers from the sources themselves.
            stream = engine.answer(question, sources, sampling) if getattr(engine, "reads_sources", False) else \
                engine.stream(messages, sampling)
            yield Delta("", prompt_tokens, 0)  # the prompt is being processed: it is spent from here on
            ran_out = False  # the loop below ended (not its caller): the record reports what was spent
            try:
                async for chunk in stream:
                    logprobs.extend(chunk.logprobs)
                    if chunk.final is not None:
                        final = chunk.final
                        break
                    if chunk.text:
                        if ttft is None:
                            ttft = (time.perf_counter() - started) * 1000
                            first_at = time.monotonic()
                            if deadline is not None:
                                left_s = deadline - time.monotonic() - SAFETY_MARGIN_S
                                limit = min(tier_cfg.max_tokens, 1 + int(left_s * self.throughput[tier].decode_tok_s))
                        parts.append(chunk.text)
                        out = lead_in.feed(chunk.text)
                        shown.append(out)
                        yield Delta(out, prompt_tokens, max(len(logprobs), len(parts)))
                        if ends_sentence(chunk.text, parts):
                            sentences += 1
                            if sentences >= MAX_SENTENCES:
                                break  # the answer is long enough: stop rather than let it ramble
                        if max(len(logprobs), len(parts)) >= limit:
                            break  # what fits the time left
                        if deadline is not None and len(parts) > 1:
                            # this answer's own pace (the rate estimate may be off for a long prompt
                            # or a busy machine): stop before the next token would pass the deadline
                            now = time.monotonic()
                            if now + (now - first_at) / (len(parts) - 1) + SAFETY_MARGIN_S > deadline:
                                break
                    if deadline is not None and time.monotonic() > deadline:
                        break
                ran_out = True
            finally:
                await stream.aclose()  # stops the engine's work for an abandoned or cut request
                if not ran_out:  # abandoned by its caller: what was spent until then
                    self.on_spent(tier, prompt_tokens, max(len(logprobs), len(parts)))
        if rest := lead_in.close():
            shown.append(rest)
            yield Delta(rest, prompt_tokens, max(len(logprobs), len(parts)))
        text = "".join(shown).strip()
        if final is None:  # stopped here: at MAX_SENTENCES, at the time's token limit, or at the deadline
            tokens_in, tokens_out = prompt_tokens, max(len(logprobs), len(parts))
            finish = "stop" if sentences >= MAX_SENTENCES else "length" if tokens_out >= limit else "deadline"
        else:
            tokens_in, tokens_out, finish = final.tokens_in, final.tokens_out, final.finish_reason
        self.on_spent(tier, tokens_in, tokens_out)
        latency = time.perf_counter() - started
        throughput = self.throughput[tier]
        throughput.observe(prompt_tokens=tokens_in, ttft_s=None if ttft is None else ttft / 1000,
                           answer_tokens=tokens_out, latency_s=latency)
        mean, low = confidence(logprobs)
        yield TierAnswer(
            text=text, tier=tier, model=engine.model, engine=engine.name, finish_reason=finish,
            tokens_in=tokens_in, tokens_out=tokens_out,
            latency_ms=round(latency * 1000, 3),
            ttft_ms=None if ttft is None else round(ttft, 3),
            logprob_mean=None if mean is None else round(mean, 6),
            logprob_min=None if low is None else round(low, 6),
            cost_usd=tier_cfg.cost_usd(tokens_in, tokens_out),
            prefill_tok_s=round(throughput.prefill_tok_s, 3), decode_tok_s=round(throughput.decode_tok_s, 3),
        )

    async def generate(self, tier: str, question: str, sources: Sequence[ScoredChunk], budget_ms: float | None = None,
                       received_at: float | None = None) -> TierAnswer:
        # closed here, not when the garbage collector gets to it: the engine's turn and the
        # request's place in the admission queue are given back before the answer is returned
        async with contextlib.aclosing(self.stream(tier, question, sources, budget_ms, received_at)) as items:
            async for item in items:
                if isinstance(item, TierAnswer):
                    return item
        raise AssertionError("the stream ended without a TierAnswer record")  # pragma: no cover

    async def close(self) -> None:
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                await engine.close()

