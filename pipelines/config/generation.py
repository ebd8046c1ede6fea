"""Settings of the Generation service: the tiers (engine, model, sampling, prices, rates)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.errors import ConfigError
from pipelines.config.env import _choice, _get, _num

RESERVED_TIER_NAMES = ("auto", "cascade")
# The generation engines a tier can use (pipelines/engines/: ENGINES maps each to its loader).
ENGINE_NAMES = ("llamacpp", "vllm", "openai", "extractive")
# An extractive tier (no model) starts from these instead of the profile's model settings.
EXTRACTIVE_DEFAULTS = dict(model="extractive", price_in=0.0, price_out=0.0, prefill_tok_s=100_000.0,
                          decode_tok_s=100_000.0)


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
    max_queue: int = 4  # requests waiting for a one-at-a-time engine beyond which the tier is full
    # openai engine
    base_url: str = ""
    api_key: str = field(default="", repr=False)  # never in a log line
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


# Shipped tier profiles (docs/generation.md, "Generation tiers"). Prices of self-hosted tiers are nominal
# (relative compute cost, in the range hosted APIs charge for models of that size): set
# RAGROUTE_<TIER>_PRICE_IN / _PRICE_OUT to your own numbers.
TIER_PROFILES: dict[str, dict[str, dict[str, object]]] = {
    # llama.cpp on CPU with the packaged GGUF models: Qwen2.5-Coder 0.5B and 1.5B, the ladder the
    # in-domain QA set chose (docs/results.md, "Routing on the in-domain QA set": right answers on
    # its held-out half 47.0% and 69.9%; SmolLM2-135M's 20.5% is dominated, and it stays available
    # as a model). The rates are
    # priors (measured on 2 CPU cores, one llama.cpp thread); the engines measure their own at
    # start-up. Answers are one or two sentences (~10-50 tokens), so 96 tokens leave room; 320
    # source tokens keep a prompt ~430 tokens, and a slower machine gets fewer (the generate budget
    # caps a prompt's prefill time: pipelines/query/generate.py).
    "cpu": {
        "small": dict(engine="llamacpp", model="qwen2.5-coder-0.5b-instruct", context_tokens=2048, max_tokens=96,
                      price_in=0.05, price_out=0.10, prefill_tok_s=160.0, decode_tok_s=40.0, source_tokens=320),
        "large": dict(engine="llamacpp", model="qwen2.5-coder-1.5b-instruct", context_tokens=2048, max_tokens=96,
                      price_in=0.15, price_out=0.30, prefill_tok_s=80.0, decode_tok_s=19.0, source_tokens=320),
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


# Every RAGROUTE_<TIER>_<SETTING> (the setting is the TierConfig field, upper-cased), with what a
# value must be: (low, high) for a number, the choices for a word, None for any string. The
# default is the shipped profile's value (TIER_PROFILES), else TierConfig's.
TIER_SETTINGS: dict[str, tuple[float, float] | tuple[str, ...] | None] = {
    "context_tokens": (256, 1_048_576),
    "max_tokens": (1, 65_536),
    "temperature": (0.0, 2.0),  # default: RAGROUTE_GEN_TEMPERATURE
    "top_p": (0.01, 1.0),
    "price_in": (0.0, 1e4),
    "price_out": (0.0, 1e4),
    "prefill_tok_s": (1.0, 1e7),
    "decode_tok_s": (1.0, 1e6),
    "source_tokens": (16, 1_048_576),
    "max_queue": (0, 1024),
    "base_url": None,
    "api_key": None,  # openai engine: default OPENAI_API_KEY
    "timeout_s": (0.1, 3600.0),
    "retries": (0, 10),
    "revision": None,
    "dtype": ("auto", "bfloat16", "float16", "float32"),
    "gpu_memory_utilization": (0.05, 0.99),
    "tensor_parallel_size": (1, 64),
    "enforce_eager": ("on", "off"),
}


def _tier(env: Mapping[str, str], name: str, base: dict[str, object], temperature: float) -> TierConfig:
    key = f"RAGROUTE_{name.upper()}"
    b = {**TierConfig(name=name, engine="", model="", context_tokens=2048, max_tokens=160).__dict__, **base,
         "temperature": temperature}
    engine = _get(env, f"{key}_ENGINE", str(b["engine"]))
    if engine not in ENGINE_NAMES:
        raise ConfigError(f"{key}_ENGINE={engine!r} is not a known engine; valid: {', '.join(ENGINE_NAMES)}")
    if engine == "extractive" and b["engine"] != "extractive":
        b.update(EXTRACTIVE_DEFAULTS)
    model = _get(env, f"{key}_MODEL", str(b["model"]))
    if not model:
        raise ConfigError(f"{key}_MODEL is not set (tier {name!r} has no default model)")
    values: dict[str, object] = {}
    for field_name, rule in TIER_SETTINGS.items():
        var, default = f"{key}_{field_name.upper()}", b[field_name]
        if isinstance(default, bool):  # on | off
            values[field_name] = _choice(env, var, "on" if default else "off", rule) == "on"  # type: ignore[arg-type]
        elif rule is None:
            values[field_name] = _get(env, var, str(default))
        elif isinstance(rule[0], str):
            values[field_name] = _choice(env, var, str(default), rule)  # type: ignore[arg-type]
        else:
            kind = type(default)
            values[field_name] = _num(env, var, kind(default), kind, *rule)  # type: ignore[misc]
    if engine == "openai" and not values["api_key"]:
        values["api_key"] = env.get("OPENAI_API_KEY", "").strip()
    tier = TierConfig(name=name, engine=engine, model=model, **values)  # type: ignore[arg-type]
    if tier.engine == "openai" and not tier.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{key}_BASE_URL={tier.base_url!r} must be the http(s) URL of an OpenAI-compatible "
                          f"API (e.g. http://host:8000/v1) for {key}_ENGINE=openai")
    if tier.max_tokens >= tier.context_tokens // 2:
        raise ConfigError(f"{key}_MAX_TOKENS ({tier.max_tokens}) must be < half of {key}_CONTEXT_TOKENS "
                          f"({tier.context_tokens})")
    return tier


def tier_profile(env: Mapping[str, str] = os.environ) -> str:
    """The shipped tier profile in force: RAGROUTE_GEN_PROFILE, or (auto) ``gpu`` only where vLLM
    can run it: a GPU machine without the `gpu` extra serves the cpu tiers."""
    profile = _choice(env, "RAGROUTE_GEN_PROFILE", "auto", ("auto", *TIER_PROFILES))
    if profile == "auto":
        import importlib.util

        from pipelines.config.budget import gpu_present

        profile = "gpu" if gpu_present() and importlib.util.find_spec("vllm") is not None else "cpu"
    return profile


@dataclass(frozen=True)
class GenerationConfig:
    tiers: dict[str, TierConfig]
    """Cheapest first: a failing tier falls back to the first one."""
    threads: int
    profile: str = "cpu"
    admission: bool = True
    """refuse at once a generation that cannot finish before its deadline (pipelines/engines/load.py)"""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> GenerationConfig:
        import re

        profile = tier_profile(env)
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
            admission=_choice(env, "RAGROUTE_ADMISSION", "on", ("on", "off")) == "on",
        )
