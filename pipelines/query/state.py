"""One request's state on its way through the query path, and the one budget mechanism.

:class:`RequestState` carries the deadline, the per-stage reports, the warnings, whether the
answer is degraded, and every tier asked (``route.path``). Every stage call goes through one of
its three runners, which are the only places that time a stage against its budget:

* :meth:`RequestState.run`: an awaited call, cut at min(its budget, what is left);
* :meth:`RequestState.run_inline`: a microsecond call on this thread (the in-memory cache);
* :meth:`RequestState.run_stream`: a stream of events (streamed generation), cut at its
  budget between events.

All three record into the same :class:`StageReport` (repeated calls of a stage share one) and
raise :class:`StageError` on a timeout or a failure, so the answer and the stream degrade the
same way. :func:`cache_call` adds the cache's rule on top: a cache failure bypasses the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from common.errors import StageError
from common.records import TierAnswer
from pipelines.api.schema import RagRequest, RouteStep, StageBudget
from pipelines.query.cache import CacheUnavailable
from pipelines.query.deadline import Deadline, StageReport

log = logging.getLogger(__name__)

T = TypeVar("T")
NO_TIME = "no time left in the total budget"


@dataclass
class Meter:
    """Tokens a request has cost so far, what its caller's quota is charged, also when the caller
    hangs up mid-answer: every finished or failed generation, plus the prompt and the tokens
    decoded so far of the one streaming now."""

    finished: int = 0
    in_progress: int = 0
    charged: bool = False  # the front door charges a request once, however it ends

    @property
    def tokens(self) -> int:
        return self.finished + self.in_progress


class RequestState:
    """Per-request state: the deadline, per-stage reports, warnings, degradation, tiers asked."""

    def __init__(self, req: RagRequest, request_id: str, deadline: Deadline, meter: Meter | None = None) -> None:
        self.req = req
        self.meter = meter if meter is not None else Meter()
        self.id = request_id
        self.deadline = deadline
        self.start = time.perf_counter()
        self.report: dict[str, StageReport] = {}
        self.warnings: list[str] = []
        self.degraded = False
        self.cache_status = "miss"
        self.steps: list[RouteStep] = []  # every tier asked, in order
        self.capacity_wait_s: float | None = None  # a tier refused for capacity: the least wait among them
        self.spent: list[TierAnswer] = []  # every completed generation (usage counts them all)

    def step(self, tier: str, outcome: str, gen: TierAnswer | None = None, reason: str = "", *,
             confidence: float | None = None, threshold: float | None = None) -> None:
        if gen is not None:
            self.spent.append(gen)
        # a finished generation costs what it reports; a failed one what it had streamed
        self.meter.finished += gen.tokens_in + gen.tokens_out if gen is not None else self.meter.in_progress
        self.meter.in_progress = 0
        self.steps.append(RouteStep(tier=tier, outcome=outcome, confidence=confidence, threshold=threshold,
                                    latency_ms=gen.latency_ms if gen else None,
                                    tokens_in=gen.tokens_in if gen else 0, tokens_out=gen.tokens_out if gen else 0,
                                    cost_usd=round(gen.cost_usd, 9) if gen else 0.0, reason=reason))

    def amend_step(self, **changes: Any) -> None:
        """Update the last step (the cascade's verdict on the answer just recorded)."""
        self.steps[-1] = self.steps[-1].model_copy(update=changes)

    def degrade(self, warning: str) -> None:
        self.degraded = True
        self.warnings.append(warning)

    def timings(self) -> dict[str, float]:
        out = {stage: round(rep.used_ms, 3) for stage, rep in self.report.items() if rep.outcome != "skipped"}
        return {**out, "total": round((time.perf_counter() - self.start) * 1000, 3)}

    def budget(self) -> dict[str, StageBudget]:
        return {stage: StageBudget(budget_ms=round(rep.budget_ms, 1), used_ms=round(rep.used_ms, 3),
                                   outcome=rep.outcome, overrun=rep.overrun, detail=rep.detail)
                for stage, rep in self.report.items()}

    def _report(self, stage: str, budget: float, limit: float, label: str) -> StageReport:
        """The stage's report (repeated calls of a stage share one); StageError (outcome
        "skipped") when there is no time left for the call."""
        rep = self.report.get(stage)
        if rep is None:
            rep = self.report[stage] = StageReport(budget_ms=budget)
        if limit <= 0:
            rep.outcome, rep.detail = "skipped", NO_TIME
            raise StageError(label, f"skipped: {NO_TIME}")
        return rep

    def run_inline(self, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """A call of microseconds on this thread (the in-memory cache): reported like ``run``,
        without a timeout (nothing could interrupt it; setting one up cost more than the call)."""
        budget = self.deadline.budget_ms(stage)
        rep = self._report(stage, budget, budget, stage)
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            rep.used_ms += (time.perf_counter() - t0) * 1000
            if rep.used_ms > budget:
                rep.detail = f"over its {budget:.0f} ms budget"

    @contextlib.contextmanager
    def _accounted(self, rep: StageReport, limit: float, label: str):
        """Time the block into ``rep``; a timeout or a failure becomes StageError, reported."""
        t0 = time.perf_counter()
        try:
            yield
        except TimeoutError:
            rep.outcome, rep.detail = "timeout", f"exceeded its {limit:.0f} ms budget"
            raise StageError(label, rep.detail) from None
        except StageError as exc:
            rep.outcome, rep.detail = "error", str(exc)
            raise
        finally:
            rep.used_ms += (time.perf_counter() - t0) * 1000

    async def run(self, stage: str, make: Callable[[], Any], *, reserve_ms: float = 0.0,
                  essential: bool = False, label: str = "") -> Any:
        """Run one stage call within its budget; raises StageError (named ``label``, default
        the stage) on timeout or failure.

        An ``essential`` stage has no fallback (retrieval): cutting it at its own budget would
        only turn a late answer into an error, so its budget is a target (an overrun is
        reported) and the hard limit is all that is left of the total.
        """
        budget = self.deadline.budget_ms(stage, reserve_ms)
        limit = max(budget, self.deadline.remaining_ms()) if essential else budget
        rep = self._report(stage, budget, limit, label or stage)
        with self._accounted(rep, limit, label or stage):
            async with asyncio.timeout(limit / 1000):
                result = await make()
        if rep.used_ms > budget:
            rep.detail = f"over its {budget:.0f} ms budget"
        return result

    async def run_stream(self, stage: str, make: Callable[[float], AsyncIterator[T]], *,
                         final: Callable[[T], bool], reserve_ms: float = 0.0, label: str = "") -> AsyncIterator[T]:
        """``make(budget_ms)``'s events up to the ``final`` one, within the stage's budget: cut
        (StageError, outcome timeout) when the next event is not there in time; a stream that
        ends before its final event fails (StageError). Reported like ``run``."""
        budget = self.deadline.budget_ms(stage, reserve_ms)
        rep = self._report(stage, budget, budget, label or stage)
        deadline = time.monotonic() + budget / 1000
        events = make(budget)
        try:
            with self._accounted(rep, budget, label or stage):
                while True:
                    try:
                        item = await asyncio.wait_for(anext(events), max(0.001, deadline - time.monotonic()))
                    except StopAsyncIteration:
                        raise StageError(label or stage, "the stream ended without a result") from None
                    yield item
                    if final(item):
                        return
        finally:
            await events.aclose()


async def cache_call(r: RequestState, blocking: bool, what: str, fn: Callable[..., T], *args: Any) -> T | None:
    """A cache call that never fails the request: a failure or timeout bypasses the cache, and
    that is reported. Calls that may block (network I/O, a model's forward pass) run in a thread
    so they never hold the event loop; the in-memory backend's microsecond calls run inline (a
    thread hop for them queued behind others under load, until the lookup ran out of budget and
    a cached question was answered again from scratch)."""
    async def call() -> T:
        return await asyncio.to_thread(fn, *args)

    try:
        return await r.run("cache", call) if blocking else r.run_inline("cache", fn, *args)
    except StageError as exc:
        if r.report["cache"].outcome == "skipped":  # no time left: not a cache failure
            return None
        log.debug("request %s: cache %s: %s", r.id, what, exc)
    except CacheUnavailable as exc:  # the backend logs outages once
        r.report["cache"].outcome, r.report["cache"].detail = "error", str(exc)
        log.debug("request %s: cache %s unavailable: %s", r.id, what, exc)
    except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass"
        r.report["cache"].outcome, r.report["cache"].detail = "error", f"the backend failed ({type(exc).__name__})"
        log.warning("request %s: cache %s failed, bypassing: %s", r.id, what, exc)
    r.cache_status = "unavailable"
    r.warnings.append(f"cache {what} failed; cache bypassed")
    return None
