"""The deadline that travels with a request, and what each stage used of its budget (the
budgets themselves: pipelines/config/budget.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pipelines.config.budget import BudgetProfile

Outcome = Literal["ok", "timeout", "error", "skipped"]


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
