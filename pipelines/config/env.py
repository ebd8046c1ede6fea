"""Reading ``RAGROUTE_*`` variables: the helpers every settings class uses, so each bad value is
refused the same way (:class:`ConfigError` naming the variable and what it must be)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from common.errors import ConfigError

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
