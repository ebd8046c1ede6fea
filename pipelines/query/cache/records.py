"""The cache's records: partitions, candidates, hits, lookups, and the backend protocol every
backend (memory.py, redis_backend.py) implements.

Every entry lives in a :class:`Partition` (tenant, index version, generation fingerprint):
lookups only ever see entries of the same partition, so tenants never share answers, an
answer is served only for the index version it was made from (or was carried to, carry.py),
and a change of model, prompt or sampling settings starts afresh. Entries record the (hashed)
ids of the documents their answer cites (:func:`doc_tag`), so they can be purged when those
documents change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from common.text import content_id
from pipelines.query.cache.policy import Decision, EntryStats, PoolStats

if TYPE_CHECKING:
    from pipelines.query.cache.carry import Carried, VersionChange

NO_REACH = -1.0  # an entry whose candidate pool is unknown: any chunk added to its collection may change it


class CacheUnavailable(Exception):
    """The cache backend could not be reached in time; callers bypass the cache."""


@dataclass(frozen=True)
class Partition:
    tenant: str
    index_version: str
    fingerprint: str  # generation settings: tier models, prompt version, sampling, top_k, collection
    collection: str = "default"  # already in the fingerprint; stored so a version change finds its entries

    @property
    def key(self) -> str:
        return content_id(self.tenant, self.index_version, self.fingerprint)


@dataclass(frozen=True)
class Candidate:
    query: str
    similarity: float
    payload: dict[str, Any]
    vector: np.ndarray | None = None  # the cached question's embedding (the verifier's learned check reads it)
    qhash: str = ""  # the entry's key within its partition (observations update it)
    stats: EntryStats = EntryStats()


@dataclass(frozen=True)
class CacheHit:
    payload: dict[str, Any]
    kind: Literal["exact", "semantic"]
    similarity: float
    verdict: str | None = None
    qhash: str = ""  # the entry served (a semantic hit's is another question's)
    score: float | None = None  # a semantic hit under the error-bounded policy: the candidate's score


def doc_tag(doc_id: str) -> str:
    """Document ids are stored hashed: safe in any tag syntax, whatever the id contains."""
    return hashlib.sha256(doc_id.encode()).hexdigest()[:16]


class CacheBackend(Protocol):
    blocking: bool  # True when calls do network I/O (run them off the event loop)

    def get_exact(self, part: Partition, qhash: str) -> dict[str, Any] | None: ...

    def candidates(self, part: Partition, vector: np.ndarray, k: int, min_similarity: float) -> list[Candidate]:
        """Up to k entries of ``part`` with cosine >= min_similarity, most similar first."""
        ...

    def put(self, part: Partition, qhash: str, query: str, vector: np.ndarray, payload: dict[str, Any],
            doc_ids: Sequence[str], reach: float = NO_REACH) -> None:
        """Store an answer citing ``doc_ids``; ``reach``: how near the question a chunk added
        later must be to drop the answer (carry.reach of the candidates it was made from)."""
        ...

    def carry(self, change: VersionChange) -> Carried:
        """Move the entries of ``change.collection`` at ``change.old_version`` that ``change.keeps``
        to ``change.new_version`` (same tenant and settings, same remaining TTL, not over an
        answer already stored there); delete the others."""
        ...

    def purge(self, *, tenant: str | None = None, doc_ids: Sequence[str] = ()) -> int:
        """Delete the entries of a tenant and/or those citing any of ``doc_ids``; returns how many.
        Purging a tenant also deletes its policy statistics."""
        ...

    def pool(self, part: Partition) -> PoolStats:
        """The policy's observations for ``part``'s tenant and generation settings (all index versions)."""
        ...

    def observe(self, part: Partition, qhash: str, band: int, score: float, wrong: bool, sample: bool,
                lookup: bool = True) -> None:
        """Record one comparison of entry ``qhash``'s answer with a fresh one, atomically (the
        entry's record, if it still exists, and its pool's). ``lookup``: count it as a lookup too
        (False for a user's verdict on a hit, whose lookup was counted when it was served)."""
        ...

    def forget(self, part: Partition, qhash: str) -> bool:
        """Delete one entry of ``part`` (a user rejected its answer); False when it was not there."""
        ...

    def count(self, part: Partition, band: int | None) -> None:
        """One more semantic lookup: decided in ``band`` (a hit; observations count their own), or
        with no candidate to decide on (None)."""
        ...

    def pools(self, tenant: str | None = None) -> dict[str, PoolStats]:
        """Each tenant's observations (or only ``tenant``'s), summed over generation settings."""
        ...

    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Observation:
    """A candidate not served (or served only after a check): its cached answer is compared
    with the fresh one once that is generated, and the outcome recorded."""

    entry: Candidate
    decision: Decision


@dataclass(frozen=True)
class SemanticLookup:
    hit: CacheHit | None
    verdicts: tuple[str, ...]  # one line per candidate the verifier looked at
    observe: Observation | None = None  # with the error-bounded policy: compare the fresh answer with this entry's
    band: int | None = None  # with the error-bounded policy: the decided candidate's score band


@dataclass(frozen=True)
class Found:
    candidates: list[Candidate]
    pool: PoolStats | None = None  # read with the candidates when the policy decides
