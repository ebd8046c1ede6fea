"""What every engine speaks: the :class:`Engine` protocol and its records (a leaf module: the
engines import it, and the registry in ``pipelines/engines/__init__.py`` imports the engines)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    """strings that end the answer (not included in it)"""


@dataclass(frozen=True)
class Final:
    finish_reason: str  # stop | length | cancelled
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True)
class Chunk:
    text: str = ""
    logprobs: tuple[float, ...] = ()  # of the tokens in ``text`` (engines that report them)
    final: Final | None = None


class Processor:
    """The cores that the serial engines of one process share (the llama.cpp tiers of a
    Generation service): one request at a time among all of them. Two models decoding at once on
    the same cores each go at well under half speed, so a fallback tier started beside a running
    answer cut that answer at its budget (measured: docs/latency.md); queued behind it instead,
    both finish, and the admission estimate (pipelines/engines/load.py, one queue for them)
    describes what really happens. ``slot``: the request's turn (awaited with its deadline);
    ``busy``: held by the decoding thread, which may outlive an abandoned request."""

    def __init__(self) -> None:
        self.slot = asyncio.Semaphore(1)
        self.busy = threading.Lock()


class Engine(Protocol):
    name: str
    model: str
    concurrency: asyncio.Semaphore | None
    """Bounds requests in flight: 1 for an engine that serves one request at a time
    (llama.cpp); None for one that batches or queues itself (vLLM, a remote server)."""

    def count_tokens(self, text: str) -> int: ...

    def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> AsyncIterator[Chunk]: ...

    async def close(self) -> None: ...
