"""Settings of the RAG (entry) service's own: the cache, candidates, workers, API keys."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.errors import ConfigError
from pipelines.config.env import _choice, _get, _num
from pipelines.config.generation import GenerationConfig
from pipelines.config.routing import CascadeConfig


@dataclass(frozen=True)
class CacheConfig:
    backend: str = "memory"
    redis_url: str = ""
    threshold: float | None = None
    """None: the verifier's tuned cosine floor (0.80), or 0.95 with the verifier off"""
    verifier: bool = True
    pair_model: bool = True
    """the verifier's cross-encoder (pipelines/query/cache/pairmodel.py); off: its features decide alone"""
    accept_probability: float | None = None
    """None: the verifier's calibrated cut on P(same question); set: this cut instead (policy=verifier)"""
    policy: str = "error-bound"
    """error-bound: paraphrases served where observed wrong hits stay within max_error (95%
    confidence); verifier: the verifier's fixed cut on P(same question)"""
    max_error: float = 0.02
    """the wrong-hit rate the operator accepts, in (0, 0.5]"""
    ttl_s: float = 3600.0
    sliding_ttl: bool = False
    carry: bool = True
    """after an ingestion job: keep the answers the change is unlikely to alter (carry.py); off: drop all"""
    max_entries: int = 10_000
    timeout_ms: float = 200.0
    retry_s: float = 2.0
    namespace: str = "ragroute"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CacheConfig:
        backend = _choice(env, "RAGROUTE_CACHE", "memory", ("memory", "redis", "off"))
        if backend == "redis" and not _get(env, "REDIS_URL", ""):
            raise ConfigError("RAGROUTE_CACHE=redis needs REDIS_URL (e.g. redis://host:6379/0)")
        return cls(
            # "memory" keeps its old meaning: in-process, or Redis when REDIS_URL is set; "redis" says so
            backend="memory" if backend == "redis" else backend,
            redis_url=_get(env, "REDIS_URL", ""),
            threshold=_num(env, "RAGROUTE_CACHE_THRESHOLD", None, float, 0.0, 1.0),  # type: ignore[arg-type]
            verifier=_choice(env, "RAGROUTE_CACHE_VERIFIER", "on", ("on", "off")) == "on",
            pair_model=_choice(env, "RAGROUTE_CACHE_PAIR_MODEL", "on", ("on", "off")) == "on",
            accept_probability=_num(env, "RAGROUTE_CACHE_ACCEPT_PROBABILITY", None, float, 0.0, 1.0),  # type: ignore[arg-type]
            policy=_choice(env, "RAGROUTE_CACHE_POLICY", "error-bound", ("error-bound", "verifier")),
            max_error=_max_error(env),
            ttl_s=_num(env, "RAGROUTE_CACHE_TTL_S", 3600.0, float, 1.0, 30 * 86400.0),
            sliding_ttl=_choice(env, "RAGROUTE_CACHE_SLIDING_TTL", "off", ("on", "off")) == "on",
            carry=_choice(env, "RAGROUTE_CACHE_CARRY", "on", ("on", "off")) == "on",
            max_entries=_num(env, "RAGROUTE_CACHE_MAX_ENTRIES", 10_000, int, 1, 10_000_000),
            timeout_ms=_num(env, "RAGROUTE_CACHE_TIMEOUT_MS", 200.0, float, 1.0, 10_000.0),
            retry_s=_num(env, "RAGROUTE_CACHE_RETRY_S", 2.0, float, 0.1, 3600.0),
            namespace=_get(env, "RAGROUTE_CACHE_NAMESPACE", "ragroute"),
        )


def _max_error(env: Mapping[str, str]) -> float:
    """The wrong-hit bound: a number in (0, 0.5] (a rate of wrong answers a cache is for)."""
    raw = env.get("RAGROUTE_CACHE_MAX_ERROR", "").strip()
    if not raw:
        return 0.02
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 0.5:
        raise ConfigError(f"RAGROUTE_CACHE_MAX_ERROR={raw!r} must be a number in (0, 0.5]: the share of "
                          "semantic lookups the cache may answer wrongly, e.g. 0.02")
    return value


@dataclass(frozen=True)
class RagConfig:
    candidates: int = 20
    default_tier: str = "small"
    cache: CacheConfig = CacheConfig()
    cascade: CascadeConfig = CascadeConfig()
    workers: int = 1
    """processes of the entry service (BentoML workers); >1 needs a cache they share (Redis)"""
    api_keys: str = ""
    """path of the API key file (pipelines/api/access.py); empty: the query API is open"""
    require_keys: bool = False
    """refuse to start without an API key file (RAGROUTE_REQUIRE_KEYS=1; the deploy files set it)"""
    max_body_bytes: int = 1 << 20
    """the largest request body rag_query, /v1 and the admin APIs read; larger is a 413, unread"""
    ingest_max_body_bytes: int = 32 << 20
    """the same for /ingest (documents come in bulk)"""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, tiers: tuple[str, ...] | None = None) -> RagConfig:
        """``tiers``: the configured tier names, when the generation settings are read already."""
        cfg = cls(
            candidates=_num(env, "RAGROUTE_CANDIDATES", 20, int, 1, 200),
            default_tier=_choice(env, "RAGROUTE_DEFAULT_TIER", "small",
                                 tiers if tiers is not None else tuple(GenerationConfig.from_env(env).tiers)),
            cache=CacheConfig.from_env(env),
            cascade=CascadeConfig.from_env(env),
            workers=rag_workers(env),
            api_keys=_get(env, "RAGROUTE_API_KEYS", ""),
            require_keys=_choice(env, "RAGROUTE_REQUIRE_KEYS", "0", ("0", "1")) == "1",
            max_body_bytes=_num(env, "RAGROUTE_MAX_BODY_BYTES", 1 << 20, int, 4096, 64 << 20),
            ingest_max_body_bytes=_num(env, "RAGROUTE_INGEST_MAX_BODY_BYTES", 32 << 20, int, 4096, 1 << 30),
        )
        if cfg.require_keys and not cfg.api_keys:
            raise ConfigError("RAGROUTE_REQUIRE_KEYS=1 but RAGROUTE_API_KEYS is not set: this deployment must not be "
                              "open to anyone; create a key file with `ragroute keys add --file keys.json ...` and "
                              "point RAGROUTE_API_KEYS at it")
        if cfg.workers > 1 and cfg.cache.backend == "memory" and not cfg.cache.redis_url:
            # Each worker would have its own in-memory cache: an answer cached by one would be a
            # miss in the others, and an admin purge would reach only the worker that got it.
            raise ConfigError(f"RAGROUTE_RAG_WORKERS={cfg.workers} needs a cache the workers share: set REDIS_URL "
                              "(or RAGROUTE_CACHE=off), or use one worker")
        return cfg


def rag_workers(env: Mapping[str, str] = os.environ) -> int:
    return _num(env, "RAGROUTE_RAG_WORKERS", 1, int, 1, 64)
