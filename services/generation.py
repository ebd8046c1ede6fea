"""Generation service: tier -> engine + model (llama.cpp on CPU, vLLM on GPU, or a remote
OpenAI-compatible endpoint), chosen per tier in config (pipelines/config/generation.py, docs/generation.md).

What ``generate`` returns and ``generate_stream`` streams (NDJSON) is the typed wire protocol
of pipelines/api/wire.py; a stage failure travels in the body (a 5xx's message BentoML would hide).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncGenerator

import bentoml

from common.errors import ConfigError, RagrouteError, StageError
from common.records import ScoredChunk, Tier, TierAnswer
from pipelines.api import wire
from pipelines.config import GenerationConfig
from services._common import RUNNER_CONNECTION, STAGE_LOGGING, TIMEOUT_S, refuse_to_start, setup_logging, to_bentoml

log = logging.getLogger(__name__)


@functools.cache
def _settings() -> GenerationConfig:
    """This service's settings, parsed once per process (the decorator needs them before ``__init__``)."""
    return GenerationConfig.from_env()


def _resources() -> dict:
    """GPUs for vLLM tiers on a GPU machine (the largest tensor_parallel_size); none on CPU."""
    try:
        cfg = _settings()
    except ConfigError:
        return {}  # reported, naming the key, when the service starts
    vllm = [t.tensor_parallel_size for t in cfg.tiers.values() if t.engine == "vllm"]
    return {"gpu": max(vllm)} if vllm and cfg.profile == "gpu" else {}


@functools.cache
def _rate_gauge():
    """The rates token limits are computed from (measured at warm-up, then from every answer), on
    /metrics; one per process (prometheus_client refuses a second metric of the same name)."""
    from prometheus_client import Gauge

    return Gauge("ragroute_generation_tokens_per_second",
                 "each tier's measured generation throughput (phase: prefill | decode)",
                 labelnames=["tier", "phase"], multiprocess_mode="mostrecent")


@functools.cache
def _spent_counter():
    """Tokens the engines processed (prompt) and decoded (completion), per tier, whether or not the
    caller stayed for the answer: what the entry service's token quota is checked against."""
    from prometheus_client import Counter

    return Counter("ragroute_generation_tokens", "tokens processed by the engines (kind: prompt | completion)",
                   labelnames=["tier", "kind"])


@functools.cache
def _load_gauge():
    """Each tier's queue as admission sees it (pipelines/engines/load.py): requests running and
    waiting, the estimated wait of a new one, and how many it refused for capacity."""
    from prometheus_client import Gauge

    return Gauge("ragroute_generation_load", "each tier's load (stat: running | waiting | wait_seconds | refused)",
                 labelnames=["tier", "stat"], multiprocess_mode="mostrecent")


def _count_spent(tier: str, tokens_in: int, tokens_out: int) -> None:
    counter = _spent_counter()
    counter.labels(tier=tier, kind="prompt").inc(tokens_in)
    counter.labels(tier=tier, kind="completion").inc(tokens_out)


@bentoml.service(name="ragroute-generation", traffic={"timeout": TIMEOUT_S["generation"]},
                 runner_connection=RUNNER_CONNECTION, logging=STAGE_LOGGING, workers=1, resources=_resources())
class Generation:
    def __init__(self) -> None:
        from pipelines import models
        from pipelines.query.generate import Generator, check_config

        setup_logging()
        with refuse_to_start("generation"):
            cfg = _settings()
            check_config(cfg)
            log.info("tier ladder (%s profile, cheapest first): %s", cfg.profile,
                     ", ".join(f"{t.name} = {t.model} ({t.engine})" for t in cfg.tiers.values()))
            for tier in cfg.tiers.values():
                if tier.engine == "llamacpp":
                    models.fetch(tier.model)  # once: later starts only verify the sha256
            self.generator = Generator(cfg, on_spent=_count_spent)
        self._report_rates()

    def _report_rates(self) -> None:
        gauge = _rate_gauge()
        for name, rates in self.generator.rates().items():
            gauge.labels(tier=name, phase="prefill").set(rates.prefill_tok_s)
            gauge.labels(tier=name, phase="decode").set(rates.decode_tok_s)
        self._report_load()

    def _report_load(self) -> None:
        gauge = _load_gauge()
        for name, load in self.generator.loads.items():
            snap = load.snapshot()
            for stat, key in (("running", "running"), ("waiting", "waiting"), ("wait_seconds", "wait_s"),
                              ("refused", "refused")):
                gauge.labels(tier=name, stat=stat).set(snap[key])

    @bentoml.api(input_spec=wire.GenerateRequest)
    async def generate(self, tier: Tier, query: str, sources: list[ScoredChunk], budget_ms: float | None = None) -> dict:
        """``budget_ms``: the time the answer may take from now; it becomes a token limit."""
        received = time.monotonic()  # taken on arrival, so queueing counts against the budget
        try:
            result = await self.generator.generate(tier, query, sources, budget_ms, received)
            self._report_rates()
        except StageError as exc:
            # BentoML hides the message of a 5xx; the caller needs it (e.g. "upstream ... timed out").
            log.warning("generate[%s] failed: %s", tier, exc)
            self._report_load()
            return wire.failure(exc).model_dump()
        except RagrouteError as exc:
            raise to_bentoml(exc) from None
        return wire.GenerateResult(generation=result).model_dump()

    @bentoml.api(input_spec=wire.GenerateRequest)
    async def generate_stream(self, tier: Tier, query: str, sources: list[ScoredChunk],
                              budget_ms: float | None = None) -> AsyncGenerator[str, None]:
        """The same answer as ``generate``, streamed as NDJSON lines as it is decoded."""
        received = time.monotonic()
        try:
            async for item in self.generator.stream(tier, query, sources, budget_ms, received):
                if isinstance(item, TierAnswer):
                    self._report_rates()
                    yield wire.line(wire.FinalEvent(final=item))
                else:
                    yield wire.line(wire.TextEvent(t=item.text, p=item.tokens_in, n=item.tokens_out))
        except RagrouteError as exc:  # headers are sent already: the error travels in the stream
            log.warning("generate_stream[%s] failed: %s", tier, exc)
            self._report_load()
            yield wire.line(wire.failure(exc))
        except Exception as exc:  # noqa: BLE001 - an engine failure: reported, the service stays up
            log.exception("generate_stream[%s]: engine error", tier)
            yield wire.line(wire.failure(exc))

    @bentoml.api
    async def calibrate(self) -> dict:
        """Measure the tiers' rates again now (the RAG service asks once every service is up, on a
        quiet machine), then ``info``."""
        await self.generator.remeasure()
        self._report_rates()
        return self._info()

    @bentoml.api
    def info(self) -> dict:
        """Per tier: engine, model, prices and the measured rates (``rates``: prefill/decode
        tok/s, where they come from, and how many answers updated them)."""
        return self._info()

    def _info(self) -> dict:  # an API method called from inside the service would go through a client
        rates, loads = self.generator.rates(), self.generator.loads
        return {name: {"engine": e.name, "model": e.model, "price_in": self.generator.cfg.tiers[name].price_in,
                       "price_out": self.generator.cfg.tiers[name].price_out, "rates": rates[name].as_dict(),
                       "load": loads[name].snapshot() if name in loads else None}
                for name, e in self.generator.engines.items()}
