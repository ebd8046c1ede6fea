"""What one tier's engine has to do, and when a new request would finish: deadline-aware admission.

A serial engine (llama.cpp: one request at a time) works through a queue. Every request that
asks for it is tracked from arrival: waiting, then running (since when), then done. From the
tier's rates (throughput.py: measured at warm-up, then followed answer by answer, and relaxing
back after a burst) and the answers' usual length (a moving average), the tracker estimates when
a new request would finish:

    finish = the running requests' remaining work + every waiting request's + its own

Tiers that share the processor (the llama.cpp tiers of one Generation service) share one
queue (:class:`Pool`): a request waits for the others' work too.

and admission refuses at once (:class:`Capacity`) a request that would not finish before its
deadline, or that finds ``max_queue`` requests waiting already (the tier is "full"). So a
generation is never started, nor queued, when it cannot finish in time: the caller falls back
(another tier, the extractive answer) in milliseconds instead of after its whole budget.

An engine that batches (vLLM, a remote server) or needs no model (extractive) has no queue of
its own here: its requests are admitted (the estimate is its own work alone).

    >>> from pipelines.engines.throughput import Throughput
    >>> now = [0.0]
    >>> load = TierLoad("large", Throughput(100.0, 20.0), serial=True, max_queue=4, clock=lambda: now[0])
    >>> first = load.admit(prompt_tokens=400, max_tokens=96, left_s=12.0)   # 4 s + 48/20 s = 6.4 s
    >>> load.start(first)
    >>> load.admit(prompt_tokens=400, max_tokens=96, left_s=12.0)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    Capacity: generate[large] stage failed: capacity: would finish in ~12.8 s, 12.0 s left (1 ahead)
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import StageError
from pipelines.engines.throughput import Throughput

ALPHA = 0.3  # weight of a new answer in the moving average of answer lengths
SAFETY_S = 0.2  # kept between an estimated finish and the deadline (the generator's own margin)
MAX_SLOWDOWN = 2.0  # estimates are scaled by at most this (Pool.slowdown)
RELAX_S = 30.0  # half-life of a measured slowdown while the processor is idle


class Capacity(StageError):
    """The tier cannot answer in time (or its queue is full): refused before any work.
    ``wait_s``: how long until it could start a new request (a client's Retry-After);
    ``finish_s``: when a request like this one would have finished (what the caller may reuse,
    briefly, to refuse the next ones without asking: pipelines/query/tiers.py)."""

    status = 503

    def __init__(self, stage: str, message: str, wait_s: float = 0.0, finish_s: float | None = None) -> None:
        super().__init__(stage, f"capacity: {message}")
        self.wait_s = wait_s
        self.finish_s = finish_s


@dataclass
class Ticket:
    id: int
    load: TierLoad
    prompt_tokens: int
    answer_tokens: float  # expected
    started: float | None = None
    deadline: float | None = None  # when its caller stops waiting for it (it is cut there at the latest)
    estimate_s: float = 0.0  # its work as estimated when it started (what held / estimated compares)


class Pool:
    """The requests of the tiers that share one processor: llama.cpp tiers in one Generation
    service take turns on the same cores, so a new request waits for all of them. Each tier has
    its own pool otherwise.

    ``slowdown``: how much longer than estimated requests really held the processor lately (a
    moving average of held / estimated, at least 1, at most MAX_SLOWDOWN), by which estimates are
    scaled. The rates come from answers, but under a burst the other services' work takes cores
    from the engine between answers, and estimates from the rates alone let in generations that
    were then cut at their budgets. It relaxes back (to 1, half-life RELAX_S) while the processor is
    idle, so an idle machine is never refused for long on the strength of a past burst."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tickets: dict[int, Ticket] = {}
        self.ids = itertools.count()
        self._slowdown = 1.0
        self._seen: float | None = None

    def slowdown(self, now: float) -> float:
        """The factor now: it relaxes only while the processor is idle (no request in the pool)."""
        if self._seen is None or self.tickets:
            return self._slowdown
        return 1.0 + (self._slowdown - 1.0) * 0.5 ** (max(0.0, now - self._seen) / RELAX_S)

    def settle(self, now: float) -> None:
        """Fix the relaxed factor at ``now`` (lock held; before the pool turns busy or idle)."""
        self._slowdown = self.slowdown(now)
        self._seen = now

    def observe(self, held_s: float, estimated_s: float, now: float) -> None:
        """A request held the processor ``held_s`` where ``estimated_s`` was expected (lock held)."""
        if estimated_s <= 0:
            return
        ratio = min(MAX_SLOWDOWN, max(1.0, held_s / estimated_s))
        self._slowdown += ALPHA * (ratio - self._slowdown)


class TierLoad:
    """One tier's load: its tickets in its pool, and what a request of it costs: its prompt and
    the expected answer at the tier's current rates. (Not a moving average of how long requests
    held the engine: one cut at its budget took the whole budget, and an average of those would
    refuse every later request of an idle tier, for good.)"""

    def __init__(self, tier: str, throughput: Throughput, *, serial: bool, max_queue: int,
                 expected_answer_tokens: float = 48.0, pool: Pool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tier = tier
        self.throughput = throughput
        self.serial = serial
        self.max_queue = max_queue
        self.expected_answer = expected_answer_tokens
        self.pool = pool if pool is not None else Pool()
        self._clock = clock
        self.refused = 0

    # -- estimates ----------------------------------------------------------------------------------
    def _rates_s(self, prompt_tokens: int, answer_tokens: float) -> float:
        """A request's work at the tier's rates alone."""
        return self.throughput.seconds(prompt_tokens, 0) + answer_tokens / self.throughput.decode_tok_s

    def _work_s(self, t: Ticket, now: float) -> float:
        """... scaled by the processor's recent slowdown."""
        return self._rates_s(t.prompt_tokens, t.answer_tokens) * self.pool.slowdown(now)

    def _remaining_s(self, t: Ticket, now: float) -> float:
        if t.started is None:
            return self._work_s(t, now)
        work = t.estimate_s
        left = work - (now - t.started)
        if left > 0:
            return left
        # Running past its estimate (the cores were slower than the rates said): nothing says when
        # it will end but its deadline, where it is cut. Counting it as nearly done admitted
        # requests behind it that then waited out their budgets for the engine.
        if t.deadline is not None:
            return max(t.deadline - now, 0.1 * work)
        return 0.1 * work

    def _mine(self) -> tuple[int, int]:
        running = sum(t.load is self and t.started is not None for t in self.pool.tickets.values())
        waiting = sum(t.load is self and t.started is None for t in self.pool.tickets.values())
        return running, waiting

    def wait_s(self) -> float:
        """How long a request arriving now would wait: the work left of every request in the pool."""
        if not self.serial:
            return 0.0
        with self.pool.lock:
            now = self._clock()
            return sum(t.load._remaining_s(t, now) for t in self.pool.tickets.values())

    def snapshot(self) -> dict[str, float | int | None]:
        with self.pool.lock:
            running, waiting = self._mine()
        return {"running": running, "waiting": waiting, "wait_s": round(self.wait_s(), 3), "refused": self.refused,
                "expected_answer_tokens": round(self.expected_answer, 1)}

    # -- a request's life -----------------------------------------------------------------------------
    def admit(self, prompt_tokens: int, max_tokens: int, left_s: float | None) -> Ticket:
        """A ticket in the queue, or Capacity when the request would not finish in ``left_s``
        (None: no deadline) or the tier's queue is full."""
        ticket = Ticket(next(self.pool.ids), self, prompt_tokens, min(float(max_tokens), self.expected_answer),
                        deadline=None if left_s is None else self._clock() + left_s)
        if not self.serial:
            return ticket  # the engine batches: nothing to wait for here (its own work is the token limit's)
        wait = self.wait_s()
        with self.pool.lock:
            running, waiting = self._mine()
            finish = wait + self._work_s(ticket, self._clock())
            if waiting >= self.max_queue:
                self.refused += 1
                raise Capacity(f"generate[{self.tier}]", f"the tier is full ({running} running, {waiting} waiting)",
                               wait, finish)
            if left_s is not None and finish + SAFETY_S > left_s:
                self.refused += 1
                others = len(self.pool.tickets)
                raise Capacity(f"generate[{self.tier}]", f"would finish in ~{finish:.1f} s, {max(0.0, left_s):.1f} s "
                                                         f"left ({others} ahead)", wait, finish)
            if not self.pool.tickets:
                self.pool.settle(self._clock())  # idle until now
            self.pool.tickets[ticket.id] = ticket
        return ticket

    def start(self, ticket: Ticket) -> None:
        ticket.started = self._clock()
        ticket.estimate_s = self._work_s(ticket, ticket.started)

    def done(self, ticket: Ticket, answer_tokens: int | None = None) -> None:
        """The request left (finished, failed or abandoned); ``answer_tokens``: the length of a
        finished answer, which the expected length follows."""
        with self.pool.lock:
            now = self._clock()
            self.pool.settle(now)  # busy until now (this ticket is still in it): no relaxing
            self.pool.tickets.pop(ticket.id, None)
            if answer_tokens and ticket.started is not None:
                # held / estimated, the estimate re-made for the answer's real length: a longer
                # answer than expected is the expected length's to follow, not a slowdown
                self.pool.observe(now - ticket.started, self._rates_s(ticket.prompt_tokens, answer_tokens), now)
                self.expected_answer += ALPHA * (answer_tokens - self.expected_answer)


def retry_after_s(wait_s: float) -> int:
    """Seconds a client refused for capacity should wait before asking again."""
    return max(1, math.ceil(wait_s))
