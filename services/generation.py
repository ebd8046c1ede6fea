"""Generation service: tier -> engine + model (llama.cpp on CPU by default)."""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import bentoml
from annotated_types import Ge, Le, MaxLen

from pipelines.config import GenerationConfig
from pipelines.errors import RagrouteError
from pipelines.records import ScoredChunk
from services._common import RUNNER_CONNECTION, TIMEOUT_S, setup_logging, to_bentoml


@bentoml.service(name="ragroute-generation", traffic={"timeout": TIMEOUT_S["generation"]},
                 runner_connection=RUNNER_CONNECTION, workers=1)
class Generation:
    def __init__(self) -> None:
        from pipelines import models
        from pipelines.query.generate import Generator, check_config

        setup_logging()
        cfg = GenerationConfig.from_env()
        check_config(cfg)
        for tier in cfg.tiers.values():
            models.fetch(tier.model)  # once: later starts only verify the sha256
        self.generator = Generator(cfg)
        # Requests wait for an engine in these threads (with their deadline), not in a queue
        # in front of them where the wait would go unseen.
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="generate")

    @bentoml.api
    async def generate(self, tier: Literal["small", "large"], query: Annotated[str, MaxLen(20_000)],
                       sources: Annotated[list[ScoredChunk], MaxLen(100)],
                       budget_ms: Annotated[float, Ge(1), Le(600_000)] | None = None) -> dict:
        """``budget_ms``: the time the answer may take from now; it becomes a token limit."""
        received = time.monotonic()  # async: taken on arrival, so queueing counts against the budget
        call = functools.partial(self.generator.generate, tier, query, sources, budget_ms, received)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except RagrouteError as exc:
            raise to_bentoml(exc) from None
        return result.model_dump()

    @bentoml.api
    def info(self) -> dict:
        return {name: {"engine": e.name, "model": e.model} for name, e in self.generator.engines.items()}
