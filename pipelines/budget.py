"""Per-stage latency budgets and the deadline that travels with a request.

Two shipped profiles (docs/latency.md, "Latency budgets"):

* ``gpu``: the product spec's defaults.
* ``cpu``: derived from measurements on a 2-core CPU machine (evals/latency.py idle, evals/load.py
  under 32 concurrent clients; the table and the reasoning are in docs/latency.md, "Latency budgets"):
  each budget covers the stage's tail under load, and the embed budget is where falling back
  (keyword retrieval, then a generation) costs more than waiting. Generation gets ~1.6x the
  1.5B ``large`` tier's idle p95 (9.9 s on the QA set; its longest answers, ~90 tokens after a
  ~430-token prompt, take ~12 s, and 12 s cut one of the README's five questions to an extract):
  16 s, and the total 20 s (what the 1.5B model buys: 69.9% right answers vs 47.0%, docs/results.md).

The profile is chosen by ``RAGROUTE_BUDGET_PROFILE`` (``auto``: ``gpu`` when CUDA is visible,
else ``cpu``); any stage can be overridden with ``RAGROUTE_BUDGET_<STAGE>_MS``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipelines.errors import ConfigError

STAGES = ("cache", "embed", "retrieve", "rerank", "route", "generate", "safety")
Outcome = Literal["ok", "timeout", "error", "skipped"]

def gpu_present() -> bool:
    """An NVIDIA GPU is visible to this machine (without importing torch into this process)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir()) and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")


PROFILES: dict[str, dict[str, float]] = {
    "gpu": {"cache": 50, "embed": 50, "retrieve": 20, "rerank": 200, "route": 50, "generate": 3000,
            "safety": 500, "total": 5000},
    "cpu": {"cache": 100, "embed": 2500, "retrieve": 50, "rerank": 250, "route": 100, "generate": 16000,
            "safety": 500, "total": 20000},
}


@dataclass(frozen=True)
class BudgetProfile:
    name: str
    stages_ms: dict[str, float]
    total_ms: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, gpu: bool | None = None) -> BudgetProfile:
        name = env.get("RAGROUTE_BUDGET_PROFILE", "auto").strip() or "auto"
        if name == "auto":
            if gpu is None:
                gpu = gpu_present()
            name = "gpu" if gpu else "cpu"
        if name not in PROFILES:
            raise ConfigError(f"RAGROUTE_BUDGET_PROFILE={name!r} is not one of auto, {', '.join(PROFILES)}")
        values = dict(PROFILES[name])
        for key in (*STAGES, "total"):
            var = f"RAGROUTE_BUDGET_{key.upper()}_MS"
            raw = env.get(var, "").strip()
            if raw:
                try:
                    values[key] = float(raw)
                except ValueError:
                    raise ConfigError(f"{var}={raw!r} is not a number of milliseconds") from None
                if not 0 < values[key] <= 600_000:
                    raise ConfigError(f"{var}={raw!r} must be between 0 and 600000")
        total = values.pop("total")
        return cls(name, values, total)


@dataclass
class StageReport:
    budget_ms: float
    used_ms: float = 0.0
    outcome: Outcome = "ok"
    detail: str = ""

    @property
    def overrun(self) -> bool:
        """Took longer than its budget (a timed-out stage did too; an essential stage may finish late)."""
        return self.outcome == "timeout" or self.used_ms > self.budget_ms


@dataclass
class Deadline:
    """What is left of a request's total budget; each stage gets min(its budget, what is left)."""

    profile: BudgetProfile
    clock: Callable[[], float] = time.monotonic
    start: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def remaining_ms(self) -> float:
        return self.profile.total_ms - (self.clock() - self.start) * 1000

    def budget_ms(self, stage: str, reserve_ms: float = 0.0) -> float:
        """The stage's budget, capped by the time left minus ``reserve_ms`` kept for later stages."""
        return max(0.0, min(self.profile.stages_ms[stage], self.remaining_ms() - reserve_ms))
