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
# The cascade's signals, their defaults and starts: shared with the routing artifact, which
# records calibrated ones (a leaf module, so neither imports the other); settings read them.
from pipelines.routing.signals import (CASCADE_SIGNALS, CASCADE_STARTS, DEFAULT_CASCADE_SIGNAL,  # noqa: F401
                                       DEFAULT_CASCADE_THRESHOLDS)

T = TypeVar("T")

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"


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
        unset = " (or unset)" if "" in choices else ""
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(c for c in choices if c)}{unset}")
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
class SearchConfig:
    """How the Retrieval service ranks chunks for a query (index/fusion.py; chosen on SciFact
    train by evals/retrieval.py)."""

    mode: str = "hybrid"
    """hybrid: dense and BM25 lists fused; dense: the embedding alone"""
    fusion: str = "score"
    weight: float = 0.45
    """score fusion: the dense share (SciFact train's best; README "Retrieval quality")"""
    rrf_k: float = 60.0
    depth: int = 100
    """chunks taken from each list before fusion"""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SearchConfig:
        return cls(
            mode=_choice(env, "RAGROUTE_RETRIEVAL", cls.mode, ("hybrid", "dense")),
            fusion=_choice(env, "RAGROUTE_FUSION", cls.fusion, ("score", "rrf")),
            weight=_num(env, "RAGROUTE_FUSION_WEIGHT", cls.weight, float, 0.0, 1.0),
            rrf_k=_num(env, "RAGROUTE_RRF_K", cls.rrf_k, float, 1.0, 1000.0),
            depth=_num(env, "RAGROUTE_FUSION_DEPTH", cls.depth, int, 1, 1000),
        )


@dataclass(frozen=True)
class RetrievalConfig:
    index_dir: Path | None
    """None means: the demo index under RAGROUTE_HOME, built on first start."""
    demo_index_dir: Path
    embed_model: str
    search: SearchConfig = SearchConfig()
    collections_dir: Path | None = None
    """more collections, one index directory each (index/collections.py)"""
    faiss_threads: int = 1
    """OpenMP threads per FAISS search: one query at a time gains nothing from more (measured 2x
    slower with 2 on a 10k flat index: evals/retrieval.py), concurrent queries use the cores"""
    milvus_uri: str = ""
    """a Milvus holding collections (index/milvus.py): standalone, cluster or Milvus Lite's server"""
    milvus_token: str = ""
    milvus_timeout_s: float = 2.0
    vector_store: str = "faiss"
    """where the ingestion API puts a new collection unless its request names a backend"""

    def milvus(self, min_timeout_s: float = 0.0):
        """The configured Milvus (index/milvus.py), None without RAGROUTE_MILVUS_URI; ``min_timeout_s``
        for callers that write (ingestion, the CLI) rather than search."""
        if not self.milvus_uri:
            return None
        from index.milvus import MilvusBackend

        return MilvusBackend(self.milvus_uri, token=self.milvus_token,
                             timeout_s=max(self.milvus_timeout_s, min_timeout_s))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RetrievalConfig:
        raw = _get(env, "RAGROUTE_INDEX_DIR", "")
        cfg = cls(
            index_dir=Path(raw).expanduser() if raw else None,
            demo_index_dir=home(env) / "indexes" / "demo",
            embed_model=EmbeddingConfig.from_env(env).model,
            search=SearchConfig.from_env(env),
            collections_dir=Path(_get(env, "RAGROUTE_COLLECTIONS_DIR", str(home(env) / "collections"))).expanduser(),
            faiss_threads=_num(env, "RAGROUTE_FAISS_THREADS", 1, int, 1, 256),
            milvus_uri=_get(env, "RAGROUTE_MILVUS_URI", ""),
            milvus_token=_get(env, "RAGROUTE_MILVUS_TOKEN", ""),
            milvus_timeout_s=_num(env, "RAGROUTE_MILVUS_TIMEOUT_S", 2.0, float, 0.05, 600.0),
            vector_store=_choice(env, "RAGROUTE_VECTOR_STORE", "faiss", ("faiss", "milvus")),
        )
        if cfg.vector_store == "milvus" and not cfg.milvus_uri:
            raise ConfigError("RAGROUTE_VECTOR_STORE=milvus needs RAGROUTE_MILVUS_URI (e.g. http://host:19530)")
        if cfg.milvus_uri and not cfg.milvus_uri.startswith(("http://", "https://", "tcp://", "unix:")):
            raise ConfigError(f"RAGROUTE_MILVUS_URI ({cfg.milvus_uri!r}) must be a server URI such as "
                              "http://host:19530: several processes share it (for Milvus Lite, run "
                              "`milvus-lite server --data-dir DIR --port 19530` and give its URI)")
        return cfg


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
    router_set: bool = False
    """RAGROUTE_ROUTER was given explicitly (it must then agree with the artifact)"""
    artifact: Path | None = None
    threshold: float | None = None
    """None: the artifact's calibrated threshold, else 0.5"""
    fallback: str = ""
    """a router to use when the artifact is refused; empty = refuse to start"""
    embed_model: str = DEFAULT_EMBED_MODEL

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RoutingConfig:
        raw_path = _get(env, "RAGROUTE_ROUTER_PATH", "")
        router = _get(env, "RAGROUTE_ROUTER", "")
        threshold = env.get("RAGROUTE_ROUTE_THRESHOLD", "").strip()
        return cls(
            router=router or ("learned" if raw_path else "heuristic"),
            router_set=bool(router),
            artifact=Path(raw_path).expanduser() if raw_path else None,
            threshold=_num(env, "RAGROUTE_ROUTE_THRESHOLD", 0.5, float, 0.0, 1.0) if threshold else None,
            fallback=_choice(env, "RAGROUTE_ROUTER_FALLBACK", "", ("", "heuristic")),
            embed_model=EmbeddingConfig.from_env(env).model,
        )


RESERVED_TIER_NAMES = ("auto", "cascade")
# The generation engines a tier can use (pipelines/engines/: ENGINES maps each to its loader).
ENGINE_NAMES = ("llamacpp", "vllm", "openai")


@dataclass(frozen=True)
class CascadeConfig:
    signal: str = DEFAULT_CASCADE_SIGNAL
    threshold: float = DEFAULT_CASCADE_THRESHOLDS[DEFAULT_CASCADE_SIGNAL]
    source: str = "built-in default"
    start: str = "cheapest"
    """cheapest | routed (CASCADE_STARTS)"""
    route_threshold: float | None = None
    """routed start: the router score from which a question starts at the large tier; None:
    the router's own threshold"""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CascadeConfig:
        """RAGROUTE_CASCADE_SIGNAL / _THRESHOLD, else the router artifact's calibrated cascade
        settings (RAGROUTE_ROUTER_PATH), else the built-in default of the signal; the start
        (RAGROUTE_CASCADE_START, _ROUTE_THRESHOLD) likewise from the environment, else the
        artifact's calibrated cascade, else the cheapest tier."""
        signal = _choice(env, "RAGROUTE_CASCADE_SIGNAL", "", ("", *CASCADE_SIGNALS))
        start = _choice(env, "RAGROUTE_CASCADE_START", "", ("", *CASCADE_STARTS))
        route_threshold = _num(env, "RAGROUTE_CASCADE_ROUTE_THRESHOLD", None, float, 0.0, 1.0)  # type: ignore[arg-type]
        calibrated = None
        path = _get(env, "RAGROUTE_ROUTER_PATH", "")
        if path and not env.get("RAGROUTE_CASCADE_THRESHOLD", "").strip():
            from pipelines.errors import ArtifactError
            from pipelines.routing.artifact import read_manifest

            try:  # the Routing service verifies the whole artifact and refuses a bad one
                calibrated = read_manifest(Path(path).expanduser()).cascade
            except ArtifactError:
                calibrated = None
            if calibrated is not None and signal and signal != calibrated.signal:
                calibrated = None
        if calibrated is not None:
            chosen, threshold, source = calibrated.signal, calibrated.threshold, f"calibrated, {path}"
        elif env.get("RAGROUTE_CASCADE_THRESHOLD", "").strip():
            chosen = signal or DEFAULT_CASCADE_SIGNAL
            threshold = _num(env, "RAGROUTE_CASCADE_THRESHOLD", 0.0, float, *CASCADE_SIGNALS[chosen])
            source = "RAGROUTE_CASCADE_THRESHOLD"
        else:
            chosen = signal or DEFAULT_CASCADE_SIGNAL
            threshold, source = DEFAULT_CASCADE_THRESHOLDS[chosen], "built-in default"
        if not start:
            start = calibrated.start if calibrated is not None else "cheapest"
            if route_threshold is None and calibrated is not None and start == "routed":
                route_threshold = calibrated.route_threshold
        return cls(chosen, threshold, source, start, route_threshold)


TIER_NAME = r"^[a-z][a-z0-9_]{0,31}$"


@dataclass(frozen=True)
class TierConfig:
    """One generation tier: engine + model + sampling defaults + context limit + price."""

    name: str
    engine: str
    model: str
    context_tokens: int
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    price_in: float = 0.0  # USD per 1M input tokens (for self-hosted tiers: an estimate of compute cost)
    price_out: float = 0.0  # USD per 1M output tokens
    prefill_tok_s: float = 200.0  # throughput priors, until the engine has measured its own
    decode_tok_s: float = 50.0
    source_tokens: int = 2048  # at most this much source text in a prompt (pipelines/query/prompt.py)
    # openai engine
    base_url: str = ""
    api_key: str = ""
    timeout_s: float = 30.0
    retries: int = 1
    # vllm engine
    revision: str = ""
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    enforce_eager: bool = False

    def cost_usd(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6


# Shipped tier profiles (README, "Generation tiers"). Prices of self-hosted tiers are nominal
# (relative compute cost, in the range hosted APIs charge for models of that size): set
# RAGROUTE_<TIER>_PRICE_IN / _PRICE_OUT to your own numbers.
TIER_PROFILES: dict[str, dict[str, dict[str, object]]] = {
    # llama.cpp on CPU with the packaged GGUF models. The rates are priors (measured on 2 CPU cores);
    # the engines measure their own at start-up. Answers are one or two sentences (~10-50 tokens,
    # evals/answer_quality.py), so 96 tokens leave room; 320 source tokens keep a prompt ~420 tokens.
    "cpu": {
        "small": dict(engine="llamacpp", model="smollm2-135m-instruct", context_tokens=2048, max_tokens=96,
                      price_in=0.02, price_out=0.04, prefill_tok_s=250.0, decode_tok_s=80.0, source_tokens=320),
        "large": dict(engine="llamacpp", model="qwen2.5-coder-0.5b-instruct", context_tokens=2048, max_tokens=96,
                      price_in=0.05, price_out=0.10, prefill_tok_s=160.0, decode_tok_s=40.0, source_tokens=320),
    },
    # vLLM on one GPU; both tiers share it with embedding and reranking (0.35 + 0.45 of its memory).
    "gpu": {
        "small": dict(engine="vllm", model="Qwen/Qwen2.5-1.5B-Instruct", context_tokens=8192, max_tokens=512,
                      price_in=0.05, price_out=0.10, prefill_tok_s=20000.0, decode_tok_s=150.0,
                      gpu_memory_utilization=0.35),
        "large": dict(engine="vllm", model="Qwen/Qwen2.5-7B-Instruct", context_tokens=8192, max_tokens=512,
                      price_in=0.20, price_out=0.40, prefill_tok_s=8000.0, decode_tok_s=60.0,
                      gpu_memory_utilization=0.45),
    },
}


def _tier(env: Mapping[str, str], name: str, base: dict[str, object], temperature: float) -> TierConfig:
    key = f"RAGROUTE_{name.upper()}"
    b = {**TierConfig(name=name, engine="", model="", context_tokens=2048, max_tokens=160).__dict__, **base}
    engine = _get(env, f"{key}_ENGINE", str(b["engine"]))
    if engine not in ENGINE_NAMES:
        raise ConfigError(f"{key}_ENGINE={engine!r} is not a known engine; valid: {', '.join(ENGINE_NAMES)}")
    model = _get(env, f"{key}_MODEL", str(b["model"]))
    if not model:
        raise ConfigError(f"{key}_MODEL is not set (tier {name!r} has no default model)")
    tier = TierConfig(
        name=name, engine=engine, model=model,
        context_tokens=_num(env, f"{key}_CONTEXT_TOKENS", int(b["context_tokens"]), int, 256, 1_048_576),
        max_tokens=_num(env, f"{key}_MAX_TOKENS", int(b["max_tokens"]), int, 1, 65_536),
        temperature=_num(env, f"{key}_TEMPERATURE", temperature, float, 0.0, 2.0),
        top_p=_num(env, f"{key}_TOP_P", float(b["top_p"]), float, 0.01, 1.0),
        price_in=_num(env, f"{key}_PRICE_IN", float(b["price_in"]), float, 0.0, 1e4),
        price_out=_num(env, f"{key}_PRICE_OUT", float(b["price_out"]), float, 0.0, 1e4),
        prefill_tok_s=_num(env, f"{key}_PREFILL_TOK_S", float(b["prefill_tok_s"]), float, 1.0, 1e7),
        decode_tok_s=_num(env, f"{key}_DECODE_TOK_S", float(b["decode_tok_s"]), float, 1.0, 1e6),
        source_tokens=_num(env, f"{key}_SOURCE_TOKENS", int(b["source_tokens"]), int, 16, 1_048_576),
        base_url=_get(env, f"{key}_BASE_URL", str(b["base_url"])),
        api_key=_get(env, f"{key}_API_KEY", ""),
        timeout_s=_num(env, f"{key}_TIMEOUT_S", float(b["timeout_s"]), float, 0.1, 3600.0),
        retries=_num(env, f"{key}_RETRIES", int(b["retries"]), int, 0, 10),
        revision=_get(env, f"{key}_REVISION", str(b["revision"])),
        dtype=_choice(env, f"{key}_DTYPE", str(b["dtype"]), ("auto", "bfloat16", "float16", "float32")),
        gpu_memory_utilization=_num(env, f"{key}_GPU_MEMORY_UTILIZATION", float(b["gpu_memory_utilization"]),
                                    float, 0.05, 0.99),
        tensor_parallel_size=_num(env, f"{key}_TENSOR_PARALLEL_SIZE", int(b["tensor_parallel_size"]), int, 1, 64),
        enforce_eager=_choice(env, f"{key}_ENFORCE_EAGER", "on" if b["enforce_eager"] else "off",
                              ("on", "off")) == "on",
    )
    if tier.engine == "openai" and not tier.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{key}_BASE_URL={tier.base_url!r} must be the http(s) URL of an OpenAI-compatible "
                          f"API (e.g. http://host:8000/v1) for {key}_ENGINE=openai")
    if tier.max_tokens >= tier.context_tokens // 2:
        raise ConfigError(f"{key}_MAX_TOKENS ({tier.max_tokens}) must be < half of {key}_CONTEXT_TOKENS "
                          f"({tier.context_tokens})")
    return tier


@dataclass(frozen=True)
class GenerationConfig:
    tiers: dict[str, TierConfig]
    """Cheapest first: a failing tier falls back to the first one."""
    threads: int
    profile: str = "cpu"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> GenerationConfig:
        import re

        from pipelines.budget import gpu_present

        profile = _choice(env, "RAGROUTE_GEN_PROFILE", "auto", ("auto", *TIER_PROFILES))
        if profile == "auto":
            # gpu only where vLLM can run it: a GPU machine without the `gpu` extra serves the cpu tiers.
            import importlib.util

            profile = "gpu" if gpu_present() and importlib.util.find_spec("vllm") is not None else "cpu"
        names = [t.strip() for t in _get(env, "RAGROUTE_TIERS", "small,large").split(",") if t.strip()]
        for name in names:
            if name in RESERVED_TIER_NAMES:
                raise ConfigError(f"RAGROUTE_TIERS: {name!r} is reserved (a rag_query mode); name the tier otherwise")
            if not re.match(TIER_NAME, name):
                raise ConfigError(f"RAGROUTE_TIERS: {name!r} is not a valid tier name (lowercase letters, digits, _)")
        if len(set(names)) != len(names) or not {"small", "large"} <= set(names):
            raise ConfigError(f"RAGROUTE_TIERS={','.join(names)!r} must list distinct tiers including small and large")
        # A tier setting for a tier that does not exist is a typo: refuse it, naming the key.
        known = {n.upper() for n in names} | {"GEN", "DEFAULT", "EMBED", "CACHE", "BUDGET", "RERANK", "ROUTE"}
        for var in env:
            m = re.match(r"^RAGROUTE_([A-Z][A-Z0-9_]*?)_(ENGINE|MODEL|BASE_URL|PRICE_IN|PRICE_OUT|MAX_TOKENS)$", var)
            if m and m.group(1) not in known:
                raise ConfigError(f"{var} configures tier {m.group(1).lower()!r}, which is not in RAGROUTE_TIERS "
                                  f"({','.join(names)})")
        temperature = _num(env, "RAGROUTE_GEN_TEMPERATURE", 0.0, float, 0.0, 2.0)
        shipped = TIER_PROFILES[profile]
        return cls(
            tiers={n: _tier(env, n, shipped.get(n, {}), temperature) for n in names},
            # One core is left to the other services: on 2 cores, 1 llama.cpp thread decodes only ~5%
            # slower than 2 (memory-bound), while 2 starve embedding and retrieval under load.
            threads=_num(env, "RAGROUTE_GEN_THREADS", max(1, (os.cpu_count() or 1) - 1), int, 1, 256),
            profile=profile,
        )


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
    max_entries: int = 10_000
    timeout_ms: float = 200.0
    retry_s: float = 2.0
    namespace: str = "ragroute"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CacheConfig:
        return cls(
            backend=_choice(env, "RAGROUTE_CACHE", "memory", ("memory", "off")),
            redis_url=_get(env, "REDIS_URL", ""),
            threshold=_num(env, "RAGROUTE_CACHE_THRESHOLD", None, float, 0.0, 1.0),  # type: ignore[arg-type]
            verifier=_choice(env, "RAGROUTE_CACHE_VERIFIER", "on", ("on", "off")) == "on",
            pair_model=_choice(env, "RAGROUTE_CACHE_PAIR_MODEL", "on", ("on", "off")) == "on",
            accept_probability=_num(env, "RAGROUTE_CACHE_ACCEPT_PROBABILITY", None, float, 0.0, 1.0),  # type: ignore[arg-type]
            policy=_choice(env, "RAGROUTE_CACHE_POLICY", "error-bound", ("error-bound", "verifier")),
            max_error=_max_error(env),
            ttl_s=_num(env, "RAGROUTE_CACHE_TTL_S", 3600.0, float, 1.0, 30 * 86400.0),
            sliding_ttl=_choice(env, "RAGROUTE_CACHE_SLIDING_TTL", "off", ("on", "off")) == "on",
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
    """path of the API key file (pipelines/access.py); empty: the query API is open"""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RagConfig:
        cfg = cls(
            candidates=_num(env, "RAGROUTE_CANDIDATES", 20, int, 1, 200),
            default_tier=_choice(env, "RAGROUTE_DEFAULT_TIER", "small", tuple(GenerationConfig.from_env(env).tiers)),
            cache=CacheConfig.from_env(env),
            cascade=CascadeConfig.from_env(env),
            workers=rag_workers(env),
            api_keys=_get(env, "RAGROUTE_API_KEYS", ""),
        )
        if cfg.workers > 1 and cfg.cache.backend == "memory" and not cfg.cache.redis_url:
            # Each worker would have its own in-memory cache: an answer cached by one would be a
            # miss in the others, and an admin purge would reach only the worker that got it.
            raise ConfigError(f"RAGROUTE_RAG_WORKERS={cfg.workers} needs a cache the workers share: set REDIS_URL "
                              "(or RAGROUTE_CACHE=off), or use one worker")
        return cfg


def rag_workers(env: Mapping[str, str] = os.environ) -> int:
    return _num(env, "RAGROUTE_RAG_WORKERS", 1, int, 1, 64)
