"""Generation service: tier -> engine + model (llama.cpp on CPU by default)."""

from __future__ import annotations

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

    @bentoml.api
    def generate(self, tier: Literal["small", "large"], query: Annotated[str, MaxLen(20_000)],
                 sources: Annotated[list[ScoredChunk], MaxLen(100)],
                 budget_ms: Annotated[float, Ge(1), Le(600_000)] | None = None) -> dict:
        """``budget_ms``: the time the answer may take; it becomes a token limit."""
        try:
            return self.generator.generate(tier, query, sources, budget_ms).model_dump()
        except RagrouteError as exc:
            raise to_bentoml(exc) from None

    @bentoml.api
    def info(self) -> dict:
        return {name: {"engine": e.name, "model": e.model} for name, e in self.generator.engines.items()}
