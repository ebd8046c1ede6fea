"""What one tier's engine has to do, and when a new request would finish: deadline-aware admission.

A serial engine (llama.cpp: one request at a time) works through a queue. Every request that
asks for it is tracked from arrival: waiting, then running (its prompt, the tokens decoded so
far), then done. From the tier's measured rates (throughput.py) and the answer length its
answers really have (a moving average), the tracker estimates when a new request would finish:

    finish = the running request's remaining work + every waiting request's + its own

and admission refuses at once (:class:`Capacity`) a request that would not finish before its
deadline, or that finds ``max_queue`` requests waiting already (the tier is "full"). So a
generation is never started, nor queued, when it cannot finish in time: the caller falls back
(another tier, the extractive answer) in milliseconds instead of after its whole budget.

An engine that batches (vLLM, a remote server) or needs no model (extractive) has no queue of
its own here: its requests are admitted (the estimate is its own work alone).

    >>> from pipelines.engines.throughput import Throughput
    >>> now = [0.0]
    >>> load = TierLoad("large", Throughput(100.0, 20.0), serial=True, max_queue=4, slowdown=1.0, clock=lambda: now[0])
    >>> first = load.admit(prompt_tokens=400, max_tokens=96, left_s=12.0)   # 4 s + 48/20 s = 6.4 s
    >>> load.start(first)
    >>> load.admit(prompt_tokens=400, max_tokens=96, left_s=12.0)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    Capacity: generate[large] stage failed: capacity: would finish in ~12.8 s, 12.0 s left (1 running, 0 waiting)
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.engines.throughput import Throughput
from pipelines.errors import StageError

ALPHA = 0.2  # weight of a new answer's length (and slowdown) in the moving averages
SAFETY_S = 0.2  # kept between an estimated finish and the deadline (the generator's own margin)
# Requests under load take longer than the rates measured at idle say (the tiers and the other
# services share the cores): each estimate is multiplied by the slowdown finished requests
# showed (their time on the engine / the estimate at the rates of the time), starting cautious.
INITIAL_SLOWDOWN = 1.5
MAX_SLOWDOWN = 5.0


class Capacity(StageError):
    """The tier cannot answer in time (or its queue is full): refused before any work.
    ``wait_s``: how long until it could start a new request (a client's Retry-After)."""

    status = 503

    def __init__(self, stage: str, message: str, wait_s: float = 0.0) -> None:
        super().__init__(stage, f"capacity: {message}")
        self.wait_s = wait_s


@dataclass
class Ticket:
    id: int
    prompt_tokens: int
    answer_tokens: float  # expected
    started: float | None = None
    decoded: int = 0


class TierLoad:
    def __init__(self, tier: str, throughput: Throughput, *, serial: bool, max_queue: int,
                 expected_answer_tokens: float = 48.0, slowdown: float = INITIAL_SLOWDOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tier = tier
        self.throughput = throughput
        self.serial = serial
        self.max_queue = max_queue
        self.expected_answer = expected_answer_tokens
        self.slowdown = slowdown
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._waiting: dict[int, Ticket] = {}
        self._running: dict[int, Ticket] = {}
        self.refused = 0

    # -- estimates ----------------------------------------------------------------------------------
    def _idle_s(self, prompt_tokens: int, answer_tokens: float) -> float:
        return self.throughput.seconds(prompt_tokens, 0) + answer_tokens / self.throughput.decode_tok_s

    def _work_s(self, t: Ticket) -> float:
        return self._idle_s(t.prompt_tokens, t.answer_tokens) * self.slowdown

    def _remaining_s(self, t: Ticket, now: float) -> float:
        if t.started is None:
            return self._work_s(t)
        left_to_decode = max(1.0, t.answer_tokens - t.decoded) / self.throughput.decode_tok_s * self.slowdown
        return max(self._work_s(t) - (now - t.started), left_to_decode if t.decoded else 0.0)

    def wait_s(self) -> float:
        """How long a request arriving now would wait for the engine."""
        if not self.serial:
            return 0.0
        with self._lock:
            now = self._clock()
            return sum(self._remaining_s(t, now) for t in [*self._running.values(), *self._waiting.values()])

    def snapshot(self) -> dict[str, float | int]:
        with self._lock:
            running, waiting = len(self._running), len(self._waiting)
        return {"running": running, "waiting": waiting, "wait_s": round(self.wait_s(), 3), "refused": self.refused,
                "expected_answer_tokens": round(self.expected_answer, 1), "slowdown": round(self.slowdown, 2)}

    # -- a request's life -----------------------------------------------------------------------------
    def admit(self, prompt_tokens: int, max_tokens: int, left_s: float | None) -> Ticket:
        """A ticket in the queue, or Capacity when the request would not finish in ``left_s``
        (None: no deadline) or the queue is full."""
        answer = min(float(max_tokens), self.expected_answer)
        ticket = Ticket(next(self._ids), prompt_tokens, answer)
        wait = self.wait_s()
        with self._lock:
            waiting, running = len(self._waiting), len(self._running)
            if self.serial and waiting >= self.max_queue:
                self.refused += 1
                raise Capacity(f"generate[{self.tier}]", f"the tier is full ({running} running, {waiting} waiting)",
                               wait)
            finish = wait + self._work_s(ticket)
            if left_s is not None and finish + SAFETY_S > left_s:
                self.refused += 1
                raise Capacity(f"generate[{self.tier}]", f"would finish in ~{finish:.1f} s, {max(0.0, left_s):.1f} s "
                                                         f"left ({running} running, {waiting} waiting)", wait)
            self._waiting[ticket.id] = ticket
        return ticket

    def start(self, ticket: Ticket) -> None:
        with self._lock:
            self._waiting.pop(ticket.id, None)
            ticket.started = self._clock()
            self._running[ticket.id] = ticket

    def progress(self, ticket: Ticket, decoded: int) -> None:
        ticket.decoded = decoded

    def done(self, ticket: Ticket, answer_tokens: int | None = None) -> None:
        """The request left (finished, failed or abandoned); ``answer_tokens``: the length of a
        finished answer, which the expected length follows."""
        with self._lock:
            self._waiting.pop(ticket.id, None)
            self._running.pop(ticket.id, None)
            if answer_tokens:
                self.expected_answer += ALPHA * (answer_tokens - self.expected_answer)
                if ticket.started is not None:
                    took = self._clock() - ticket.started
                    ratio = took / max(1e-3, self._idle_s(ticket.prompt_tokens, answer_tokens))
                    self.slowdown += ALPHA * (min(MAX_SLOWDOWN, max(1.0, ratio)) - self.slowdown)


def retry_after_s(wait_s: float) -> int:
    """Seconds a client refused for capacity should wait before asking again."""
    return max(1, math.ceil(wait_s))
