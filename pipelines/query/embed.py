"""Embed stage: text -> L2-normalized float32 vectors (sentence-transformers)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np

from pipelines import models
from pipelines.config import EmbeddingConfig

log = logging.getLogger(__name__)


class Embedder(Protocol):
    model_id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalized."""
        ...


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    """A sentence-transformers model: a packaged name, a local path or a Hugging Face id."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_id = cfg.model
        self.batch_size = cfg.batch_size
        self.device = pick_device(cfg.device)
        local = models.packaged_embedder_path(cfg.model)
        self._model = SentenceTransformer(str(local or cfg.model), device=self.device)
        self.dim = int(self._model.get_embedding_dimension())
        log.info("embedder %s loaded on %s (dim %d)", self.model_id, self.device, self.dim)

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class GreedyBatcher:
    """Concurrent ``encode`` calls share model runs without a lone call ever waiting.

    BentoML's adaptive batching (``batchable=True``) holds a request for as long as the average
    past wait, which feeds on itself: after a burst, a lone query waited 60-400 ms for company
    that never came. Here a call runs at once when the model is idle; calls that arrive while
    it works queue, and the next run takes all of them (up to ``max_batch`` texts, whole calls
    only; a larger call runs alone). Runs happen one at a time on one thread, so the event loop
    stays free and two runs never fight over the same cores.

    Async methods; one instance per event loop.
    """

    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch ({max_batch}) must be >= 1")
        self._encode = encode
        self.max_batch = max_batch
        self._queue: collections.deque[tuple[list[str], asyncio.Future]] = collections.deque()
        self._running = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self.runs = 0  # model runs so far (a batch of several calls counts once)

    async def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) rows for these texts, exactly as ``encode(texts)`` would return them."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((list(texts), future))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[str], asyncio.Future]]:
        batch = [self._queue.popleft()]
        size = len(batch[0][0])
        while self._queue and size + len(self._queue[0][0]) <= self.max_batch:
            size += len(self._queue[0][0])
            batch.append(self._queue.popleft())
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = [(texts, fut) for texts, fut in self._take() if not fut.cancelled()]
                if not batch:
                    continue
                flat = [t for texts, _ in batch for t in texts]
                try:
                    vectors = await loop.run_in_executor(self._executor, self._encode, flat)
                except Exception as exc:  # noqa: BLE001 - each waiting call gets the model's error
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                finally:
                    self.runs += 1
                start = 0
                for texts, fut in batch:
                    if not fut.done():
                        fut.set_result(vectors[start:start + len(texts)])
                    start += len(texts)
        finally:
            self._running = False
