"""The safety stage's settings (the check itself: pipelines/query/safety.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from common.errors import ConfigError


@dataclass(frozen=True)
class SafetyConfig:
    action: str = "flag"
    min_grounding: float = 0.5
    blocked: re.Pattern[str] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SafetyConfig:
        action = env.get("RAGROUTE_SAFETY_ACTION", "flag").strip() or "flag"
        if action not in ("flag", "replace", "off"):
            raise ConfigError(f"RAGROUTE_SAFETY_ACTION={action!r} is not one of flag, replace, off")
        raw = env.get("RAGROUTE_SAFETY_MIN_GROUNDING", "").strip()
        try:
            grounding = float(raw) if raw else 0.5
        except ValueError:
            raise ConfigError(f"RAGROUTE_SAFETY_MIN_GROUNDING={raw!r} is not a number") from None
        if not 0 <= grounding <= 1:
            raise ConfigError(f"RAGROUTE_SAFETY_MIN_GROUNDING={raw!r} must be between 0 and 1")
        pattern = env.get("RAGROUTE_SAFETY_BLOCKED", "").strip()
        try:
            blocked = re.compile(pattern, re.I) if pattern else None
        except re.error as exc:
            raise ConfigError(f"RAGROUTE_SAFETY_BLOCKED is not a valid regular expression: {exc}") from None
        return cls(action, grounding, blocked)
