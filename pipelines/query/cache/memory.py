"""The in-process cache backend (the default without ``REDIS_URL``)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipelines.config import CacheConfig
from pipelines.query.cache.policy import BANDS, EntryStats, PoolStats
from pipelines.query.cache.carry import Carried, VersionChange
from pipelines.query.cache.records import NO_REACH, Candidate, Partition, doc_tag


@dataclass
class _Entry:
    part: Partition
    qhash: str
    query: str
    vector: np.ndarray
    payload: dict[str, Any]
    doc_tags: frozenset[str]
    expires_at: float
    reach: float = NO_REACH
    stats: EntryStats = EntryStats()


class _Pool:
    def __init__(self) -> None:
        self.verified = [0] * BANDS
        self.wrong = [0] * BANDS
        self.samples = 0
        self.samples_wrong = 0
        self.lookups = [0] * BANDS
        self.other_lookups = 0

    def frozen(self) -> PoolStats:
        return PoolStats(tuple(self.verified), tuple(self.wrong), self.samples, self.samples_wrong, tuple(self.lookups),
                         self.other_lookups)


class InMemoryCache:
    """Process-local backend: fixed TTL (sliding if configured), FIFO eviction beyond
    ``max_entries``. Semantic lookup is a dot product over the partition's live entries.
    The policy's statistics live as long as the process."""

    blocking = False  # microseconds per call: run inline

    def __init__(self, cfg: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = cfg.ttl_s
        self.sliding = cfg.sliding_ttl
        self.max_entries = cfg.max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._matrices: dict[str, tuple[np.ndarray, list[_Entry]]] = {}
        self._pools: dict[tuple[str, str], _Pool] = {}  # (tenant, generation settings) -> observations
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, entry: _Entry | None) -> bool:
        return entry is not None and entry.expires_at > self._clock()

    def _touch(self, entry: _Entry) -> None:
        if self.sliding:
            entry.expires_at = self._clock() + self.ttl_s

    def get_exact(self, part: Partition, qhash: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get((part.key, qhash))
            if not self._live(entry):
                return None
            self._touch(entry)  # type: ignore[arg-type]
            return entry.payload  # type: ignore[union-attr]

    def candidates(self, part: Partition, vector: np.ndarray, k: int, min_similarity: float) -> list[Candidate]:
        with self._lock:
            if part.key not in self._matrices:
                live = [e for e in self._entries.values() if e.part == part and self._live(e)]
                if not live:
                    return []
                self._matrices[part.key] = (np.stack([e.vector for e in live]), live)
            matrix, entries = self._matrices[part.key]
            sims = matrix @ np.asarray(vector, dtype=np.float32)
            out = []
            for i in np.argsort(-sims):
                if sims[i] < min_similarity or len(out) == k:
                    break
                if self._live(entries[i]):
                    self._touch(entries[i])
                    e = entries[i]
                    out.append(Candidate(e.query, float(sims[i]), e.payload, e.vector, e.qhash, e.stats))
            return out

    def put(self, part: Partition, qhash: str, query: str, vector: np.ndarray, payload: dict[str, Any],
            doc_ids: Sequence[str], reach: float = NO_REACH) -> None:
        with self._lock:
            self._entries.pop((part.key, qhash), None)
            self._entries[(part.key, qhash)] = _Entry(part, qhash, query, np.asarray(vector, dtype=np.float32),
                                                      payload, frozenset(map(doc_tag, doc_ids)),
                                                      self._clock() + self.ttl_s, reach)
            self._matrices.pop(part.key, None)
            now = self._clock()
            while len(self._entries) > self.max_entries or (
                not self.sliding and self._entries and next(iter(self._entries.values())).expires_at <= now
            ):
                _, old = self._entries.popitem(last=False)
                self._matrices.pop(old.part.key, None)

    def carry(self, change: VersionChange) -> Carried:
        kept = dropped = 0
        with self._lock:
            moving = [(k, e) for k, e in self._entries.items() if e.part.collection == change.collection
                      and e.part.index_version == change.old_version and self._live(e)]
            for key, entry in moving:
                del self._entries[key]
                self._matrices.pop(entry.part.key, None)
                if not change.keeps(entry.doc_tags, entry.vector, entry.reach):
                    dropped += 1
                    continue
                kept += 1
                part = replace(entry.part, index_version=change.new_version)
                if (part.key, entry.qhash) not in self._entries:  # a fresh answer stored meanwhile stays
                    # at the end of the eviction order with its own expiry: reads check expiry anyway
                    self._entries[(part.key, entry.qhash)] = replace(entry, part=part)
                    self._matrices.pop(part.key, None)
        return Carried(kept, dropped)

    def purge(self, *, tenant: str | None = None, doc_ids: Sequence[str] = ()) -> int:
        tags = {doc_tag(d) for d in doc_ids}
        with self._lock:
            doomed = [k for k, e in self._entries.items()
                      if (tenant is None or e.part.tenant == tenant) and (not tags or e.doc_tags & tags)]
            for k in doomed:
                self._matrices.pop(self._entries.pop(k).part.key, None)
            if tenant is not None and not tags:
                for key in [k for k in self._pools if k[0] == tenant]:
                    del self._pools[key]
            return len(doomed)

    def forget(self, part: Partition, qhash: str) -> bool:
        with self._lock:
            entry = self._entries.pop((part.key, qhash), None)
            if entry is not None:
                self._matrices.pop(part.key, None)
            return entry is not None

    def pool(self, part: Partition) -> PoolStats:
        with self._lock:
            pool = self._pools.get((part.tenant, part.fingerprint))
            return pool.frozen() if pool else PoolStats()

    def observe(self, part: Partition, qhash: str, band: int, score: float, wrong: bool, sample: bool,
                lookup: bool = True) -> None:
        with self._lock:
            entry = self._entries.get((part.key, qhash))
            if entry is not None:
                entry.stats = entry.stats.after(score, wrong)
            pool = self._pools.setdefault((part.tenant, part.fingerprint), _Pool())
            pool.lookups[band] += lookup
            pool.verified[band] += 1
            pool.wrong[band] += wrong
            pool.samples += sample
            pool.samples_wrong += sample and wrong

    def count(self, part: Partition, band: int | None) -> None:
        with self._lock:
            pool = self._pools.setdefault((part.tenant, part.fingerprint), _Pool())
            if band is None:
                pool.other_lookups += 1
            else:
                pool.lookups[band] += 1

    def pools(self, tenant: str | None = None) -> dict[str, PoolStats]:
        with self._lock:
            out: dict[str, PoolStats] = {}
            for (t, _), pool in self._pools.items():
                if tenant is not None and t != tenant:
                    continue
                out[t] = out.get(t, PoolStats()) + pool.frozen()
            return out

    def stats(self) -> dict[str, Any]:
        return {"backend": "memory", "entries": len(self._entries)}
