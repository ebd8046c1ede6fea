"""Redis's health as one process sees it, shared by everything in it that talks to Redis (the API
keys' limits and quotas, the semantic cache), so that an outage costs a request at most one
short timeout, and only while it is being discovered.

- closed: calls go through.
- open (after a connection error or timeout): calls are refused at once (``allow()`` is False)
  for ``retry_s``; the caller degrades (limits not checked, cache bypassed) and says so.
- half-open (``retry_s`` later): one call is let through to probe; its success closes the
  breaker, its failure opens it for another ``retry_s``. Other calls meanwhile are refused.

So with Redis paused, a replica's requests pay Redis's timeout only on the first failure and
on one probe per ``retry_s``; the rest pay nothing for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Breaker:
    def __init__(self, retry_s: float = 2.0, name: str = "Redis", clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_s = retry_s
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._down = False
        self._probing = False

    @property
    def down(self) -> bool:
        return self._down

    def retry_in(self) -> float:
        return max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """Whether a call may go to Redis now (closed, or the one probe of a half-open breaker)."""
        with self._lock:
            if not self._down:
                return True
            if self._clock() < self._open_until or self._probing:
                return False
            self._probing = True
            return True

    def failed(self, op: str, exc: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down, self._probing = True, False
            self._open_until = self._clock() + self.retry_s
        if first:
            log.warning("%s unreachable (%s: %s: %s); bypassing it, probing again every %.1f s", self.name, op,
                        type(exc).__name__, exc, self.retry_s)

    def succeeded(self) -> None:
        with self._lock:
            was_down = self._down
            self._down = self._probing = False
        if was_down:
            log.info("%s reachable again", self.name)
