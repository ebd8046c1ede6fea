"""Cache stage: exact-match lookup (before any embedding) and semantic lookup (cosine).

Entries live in partitions (a key derived from the index version and the request's
generation settings), so an answer is only ever served for the same index and settings.
``CacheBackend`` is the interface; ``InMemoryCache`` is the embedded default and the
Redis backend of a later issue implements the same protocol.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from pipelines.config import CacheConfig
from pipelines.text import content_id


@dataclass(frozen=True)
class CacheHit:
    payload: dict[str, Any]
    kind: Literal["exact", "semantic"]
    similarity: float


class CacheBackend(Protocol):
    def get_exact(self, partition: str, key: str) -> CacheHit | None: ...

    def get_semantic(self, partition: str, vector: np.ndarray) -> CacheHit | None: ...

    def put(self, partition: str, key: str, vector: np.ndarray, payload: dict[str, Any]) -> None: ...


def partition_key(*parts: str | int) -> str:
    return content_id(*(str(p) for p in parts))


@dataclass
class _Entry:
    partition: str
    key: str
    vector: np.ndarray
    payload: dict[str, Any]
    expires_at: float


class InMemoryCache:
    """Process-local cache: fixed TTL, FIFO eviction beyond ``max_entries``.

    Semantic lookup is a brute-force dot product over the partition's live entries
    (vectors are L2-normalized, so that is the cosine similarity).
    """

    def __init__(self, cfg: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = cfg.threshold
        self.ttl_s = cfg.ttl_s
        self.max_entries = cfg.max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._matrices: dict[str, tuple[np.ndarray, list[_Entry]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, entry: _Entry | None) -> bool:
        return entry is not None and entry.expires_at > self._clock()

    def get_exact(self, partition: str, key: str) -> CacheHit | None:
        with self._lock:
            entry = self._entries.get((partition, key))
            if not self._live(entry):
                return None
            return CacheHit(payload=entry.payload, kind="exact", similarity=1.0)  # type: ignore[union-attr]

    def get_semantic(self, partition: str, vector: np.ndarray) -> CacheHit | None:
        with self._lock:
            if partition not in self._matrices:
                live = [e for e in self._entries.values() if e.partition == partition and self._live(e)]
                if not live:
                    return None
                self._matrices[partition] = (np.stack([e.vector for e in live]), live)
            matrix, entries = self._matrices[partition]
            sims = matrix @ np.asarray(vector, dtype=np.float32)
            for i in np.argsort(-sims):
                if sims[i] < self.threshold:
                    return None
                if self._live(entries[i]):
                    return CacheHit(payload=entries[i].payload, kind="semantic", similarity=float(sims[i]))
            return None

    def put(self, partition: str, key: str, vector: np.ndarray, payload: dict[str, Any]) -> None:
        with self._lock:
            self._entries.pop((partition, key), None)
            self._entries[(partition, key)] = _Entry(
                partition, key, np.asarray(vector, dtype=np.float32), payload, self._clock() + self.ttl_s
            )
            self._matrices.pop(partition, None)
            now = self._clock()
            while len(self._entries) > self.max_entries or (
                self._entries and next(iter(self._entries.values())).expires_at <= now
            ):
                _, old = self._entries.popitem(last=False)
                self._matrices.pop(old.partition, None)


def make_cache(cfg: CacheConfig) -> CacheBackend | None:
    return InMemoryCache(cfg) if cfg.backend == "memory" else None
