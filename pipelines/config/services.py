"""One settings object per service, parsed once when the service starts.

Each service's ``__init__`` calls its ``from_env`` once and passes the parts on; nothing else in
the service reads the environment. What every process reads (logging, what a bad setting does
at start-up) is :class:`ProcessSettings`, read by the service module at import (BentoML's
decorators need some of it before any ``__init__``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.errors import ConfigError
from pipelines.config.budget import BudgetProfile
from pipelines.config.env import _choice, _get, _num
from pipelines.config.generation import GenerationConfig
from pipelines.config.rag import RagConfig
from pipelines.config.retrieval import EmbeddingConfig, RetrievalConfig
from pipelines.config.routing import RoutingConfig
from pipelines.config.safety import SafetyConfig


@dataclass(frozen=True)
class ProcessSettings:
    log_level: str = "INFO"
    stage_access_log: bool = False
    """the stage services' own access logs (off: the entry service's log and /metrics say it)"""
    exit_on_startup_error: bool = True
    """a bad setting found at start-up stops the whole `bentoml serve`"""
    generation_url: str = ""
    """a Generation service running elsewhere, called instead of starting one here"""
    stage_nice: int = 5
    """how many nice levels the services other than Generation run below it: on shared cores a
    generation that was admitted finishes in time while a burst of other requests waits"""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ProcessSettings:
        return cls(
            log_level=_choice(env, "RAGROUTE_LOG_LEVEL", "INFO",
                              ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "debug", "info", "warning", "error",
                               "critical")).upper(),
            stage_access_log=_choice(env, "RAGROUTE_STAGE_ACCESS_LOG", "0", ("0", "1")) == "1",
            exit_on_startup_error=_choice(env, "RAGROUTE_EXIT_ON_STARTUP_ERROR", "1", ("0", "1")) == "1",
            generation_url=_get(env, "RAGROUTE_GENERATION_URL", ""),
            stage_nice=_num(env, "RAGROUTE_STAGE_NICE", 5, int, 0, 19),
        )


@dataclass(frozen=True)
class RagSettings:
    """The RAG (entry) service's settings: its own, and those of the stages it needs to know
    (the tiers, the router, the collections, the embedding model), each read once."""

    rag: RagConfig
    generation: GenerationConfig
    routing: RoutingConfig
    retrieval: RetrievalConfig
    embedding: EmbeddingConfig
    budget: BudgetProfile
    safety: SafetyConfig
    admin_token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RagSettings:
        embedding = EmbeddingConfig.from_env(env)
        generation = GenerationConfig.from_env(env)
        return cls(
            rag=RagConfig.from_env(env, tiers=tuple(generation.tiers)),
            generation=generation,
            routing=RoutingConfig.from_env(env, embedding=embedding),
            retrieval=RetrievalConfig.from_env(env, embedding=embedding),
            embedding=embedding,
            budget=BudgetProfile.from_env(env),
            safety=SafetyConfig.from_env(env),
            admin_token=admin_token(env),
        )


MIN_ADMIN_TOKEN_CHARS = 16


def admin_token(env: Mapping[str, str] = os.environ) -> str:
    """RAGROUTE_ADMIN_TOKEN: unset (the admin APIs are off) or at least 16 characters, not all one."""
    token = env.get("RAGROUTE_ADMIN_TOKEN", "")
    if token and (len(token) < MIN_ADMIN_TOKEN_CHARS or len(set(token)) < 4):
        raise ConfigError(f"RAGROUTE_ADMIN_TOKEN is too weak ({len(token)} characters, {len(set(token))} distinct): "
                          f"use at least {MIN_ADMIN_TOKEN_CHARS} random characters, e.g. `python -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))'`, or unset it to turn the admin APIs off")
    return token
