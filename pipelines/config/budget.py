"""Per-stage latency budgets: the shipped profiles and the settings that choose and override them
(the deadline that travels with a request is pipelines/query/deadline.py).

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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError

STAGES = ("cache", "embed", "retrieve", "rerank", "route", "generate", "safety")


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
