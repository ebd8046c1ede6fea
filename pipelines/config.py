"""Typed configuration, one dataclass per service, loaded from ``RAGROUTE_*`` env vars.

Every option is listed in README.md ("Configuration"). Invalid values raise
:class:`ConfigError` naming the variable, at service start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipelines.errors import ConfigError

T = TypeVar("T")

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
TIERS = ("small", "large")


def _get(env: Mapping[str, str], key: str, default: str) -> str:
    value = env.get(key, "").strip()
    return value if value else default


def _num(env: Mapping[str, str], key: str, default: T, kind: type[T], lo: float, hi: float) -> T:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)  # type: ignore[call-arg]
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
    if not lo <= value <= hi:  # type: ignore[operator]
        raise ConfigError(f"{key}={raw!r} must be between {lo} and {hi}")
    return value


def _choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = _get(env, key, default)
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    return value


def home(env: Mapping[str, str] = os.environ) -> Path:
    """Root of ragroute's local state (model cache, built indexes)."""
    return Path(_get(env, "RAGROUTE_HOME", str(Path.home() / ".cache" / "ragroute"))).expanduser()


def model_cache(env: Mapping[str, str] = os.environ) -> Path:
    return Path(_get(env, "RAGROUTE_MODEL_CACHE", str(home(env) / "models"))).expanduser()


@dataclass(frozen=True)
class EmbeddingConfig:
    model: str = DEFAULT_EMBED_MODEL
    device: str = "auto"
    batch_size: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> EmbeddingConfig:
        return cls(
            model=_get(env, "RAGROUTE_EMBED_MODEL", DEFAULT_EMBED_MODEL),
            device=_choice(env, "RAGROUTE_EMBED_DEVICE", "auto", ("auto", "cpu", "cuda")),
            batch_size=_num(env, "RAGROUTE_EMBED_BATCH_SIZE", 64, int, 1, 4096),
        )


@dataclass(frozen=True)
class RetrievalConfig:
    index_dir: Path | None
    """None means: the demo index under RAGROUTE_HOME, built on first start."""
    demo_index_dir: Path
    embed_model: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RetrievalConfig:
        raw = _get(env, "RAGROUTE_INDEX_DIR", "")
        return cls(
            index_dir=Path(raw).expanduser() if raw else None,
            demo_index_dir=home(env) / "indexes" / "demo",
            embed_model=EmbeddingConfig.from_env(env).model,
        )


@dataclass(frozen=True)
class RerankConfig:
    scorer: str = "hybrid"
    cross_encoder: str = ""
    dense_weight: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RerankConfig:
        cfg = cls(
            scorer=_choice(env, "RAGROUTE_RERANKER", "hybrid", ("hybrid", "cross-encoder")),
            cross_encoder=_get(env, "RAGROUTE_RERANK_MODEL", ""),
            dense_weight=_num(env, "RAGROUTE_RERANK_DENSE_WEIGHT", 0.5, float, 0.0, 1.0),
        )
        if cfg.scorer == "cross-encoder" and not cfg.cross_encoder:
            raise ConfigError(
                "RAGROUTE_RERANKER=cross-encoder needs RAGROUTE_RERANK_MODEL "
                "(a local path or Hugging Face id of a sentence-transformers CrossEncoder)"
            )
        return cfg


@dataclass(frozen=True)
class RoutingConfig:
    router: str = "heuristic"
    threshold: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RoutingConfig:
        return cls(
            router=_get(env, "RAGROUTE_ROUTER", "heuristic"),
            threshold=_num(env, "RAGROUTE_ROUTE_THRESHOLD", 0.5, float, 0.0, 1.0),
        )


@dataclass(frozen=True)
class TierConfig:
    name: str
    engine: str
    model: str
    context_tokens: int
    max_tokens: int
    prefill_tok_s: float = 200.0  # throughput estimates used to fit an answer into a time budget
    decode_tok_s: float = 50.0


@dataclass(frozen=True)
class GenerationConfig:
    tiers: dict[str, TierConfig]
    threads: int
    temperature: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> GenerationConfig:
        defaults = {"small": "smollm2-135m-instruct", "large": "qwen2.5-coder-0.5b-instruct"}
        # Measured through the Generation service on 2 CPU cores (conservative; README).
        rates = {"small": (250.0, 80.0), "large": (160.0, 40.0)}
        tiers = {}
        for tier in TIERS:
            key = f"RAGROUTE_{tier.upper()}"
            tiers[tier] = TierConfig(
                name=tier,
                engine=_get(env, f"{key}_ENGINE", "llamacpp"),
                model=_get(env, f"{key}_MODEL", defaults[tier]),
                context_tokens=_num(env, f"{key}_CONTEXT_TOKENS", 2048, int, 256, 131072),
                max_tokens=_num(env, f"{key}_MAX_TOKENS", 160, int, 1, 8192),
                prefill_tok_s=_num(env, f"{key}_PREFILL_TOK_S", rates[tier][0], float, 1.0, 1e6),
                decode_tok_s=_num(env, f"{key}_DECODE_TOK_S", rates[tier][1], float, 1.0, 1e6),
            )
        return cls(
            tiers=tiers,
            # One core is left to the other services: on 2 cores, 1 llama.cpp thread decodes only ~5%
            # slower than 2 (memory-bound), while 2 starve embedding and retrieval under load.
            threads=_num(env, "RAGROUTE_GEN_THREADS", max(1, (os.cpu_count() or 1) - 1), int, 1, 256),
            temperature=_num(env, "RAGROUTE_GEN_TEMPERATURE", 0.0, float, 0.0, 2.0),
        )


@dataclass(frozen=True)
class CacheConfig:
    backend: str = "memory"
    redis_url: str = ""
    threshold: float = 0.95
    verifier: bool = True
    ttl_s: float = 3600.0
    sliding_ttl: bool = False
    max_entries: int = 10_000
    timeout_ms: float = 200.0
    retry_s: float = 2.0
    namespace: str = "ragroute"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CacheConfig:
        return cls(
            backend=_choice(env, "RAGROUTE_CACHE", "memory", ("memory", "off")),
            redis_url=_get(env, "REDIS_URL", ""),
            threshold=_num(env, "RAGROUTE_CACHE_THRESHOLD", 0.95, float, 0.0, 1.0),
            verifier=_choice(env, "RAGROUTE_CACHE_VERIFIER", "on", ("on", "off")) == "on",
            ttl_s=_num(env, "RAGROUTE_CACHE_TTL_S", 3600.0, float, 1.0, 30 * 86400.0),
            sliding_ttl=_choice(env, "RAGROUTE_CACHE_SLIDING_TTL", "off", ("on", "off")) == "on",
            max_entries=_num(env, "RAGROUTE_CACHE_MAX_ENTRIES", 10_000, int, 1, 10_000_000),
            timeout_ms=_num(env, "RAGROUTE_CACHE_TIMEOUT_MS", 200.0, float, 1.0, 10_000.0),
            retry_s=_num(env, "RAGROUTE_CACHE_RETRY_S", 2.0, float, 0.1, 3600.0),
            namespace=_get(env, "RAGROUTE_CACHE_NAMESPACE", "ragroute"),
        )


@dataclass(frozen=True)
class RagConfig:
    candidates: int = 20
    default_tier: str = "small"
    cache: CacheConfig = CacheConfig()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RagConfig:
        return cls(
            candidates=_num(env, "RAGROUTE_CANDIDATES", 20, int, 1, 200),
            default_tier=_choice(env, "RAGROUTE_DEFAULT_TIER", "small", TIERS),
            cache=CacheConfig.from_env(env),
        )
