"""Which cached answers survive a change of a collection's documents.

An ingestion job (pipelines/indexing/ingest.py) makes a new index version; the cache's
partitions are per version, so by default every entry of the old version would become
unreachable. Instead, after the swap, each entry of the old version is judged by
:meth:`VersionChange.keeps` and, if kept, moved to the new version (the others are deleted):

1. none of the documents among its sources was replaced or deleted (an answer never cites a
   changed or deleted document again), and
2. no chunk the update added is nearer its question (cosine of the embeddings) than the
   entry's ``reach`` (:func:`reach`: the 10th nearest of the candidates the answer was made
   from): an added chunk that near would likely have been reranked among the sources.

It is a heuristic, measured by ``evals/cache_survival.py`` against what would really change
(asking again on the new version): an added chunk can still enter the sources from farther
(the reranker weighs BM25 too), and a changed document that was a candidate without being a
source can leave its place to another chunk. Entries stored without a ``reach`` (-1) are
dropped by any added chunk. ``RAGROUTE_CACHE_CARRY=off`` drops every entry at every change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.records import ScoredChunk
from pipelines.query.cache.records import NO_REACH, doc_tag


REACH_RANK = 10  # chosen on SciFact train by evals/cache_survival.py (docs/documents.md "The cache follows the documents")


def reach(candidates: Sequence[ScoredChunk]) -> float:
    """How near the question an added chunk must be to be likely to change the answer made from
    ``candidates`` (the retrieved chunks its sources were reranked from): the cosine of the
    ``REACH_RANK``-th nearest candidate (the farthest, with fewer). The farthest candidate of all
    would be the safe bound for dense retrieval, but the pool is fused with BM25, whose
    candidates can be far in embedding space: with it a third of the cache survived a 1% update,
    with the 10th nearest nine in ten, at 2% of survivors whose sources would differ (half of
    what keeping every entry not citing a changed document gives)."""
    cosines = sorted((c.dense_score for c in candidates), reverse=True)
    return cosines[min(REACH_RANK, len(cosines)) - 1] if cosines else NO_REACH


@dataclass(frozen=True)
class VersionChange:
    collection: str
    old_version: str
    new_version: str
    changed_tags: frozenset[str]  # doc_tag() of every document replaced or deleted
    added: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))  # added chunks' embeddings

    @classmethod
    def of(cls, collection: str, old_version: str, new_version: str, changed_doc_ids: Iterable[str],
           added: np.ndarray | None = None) -> VersionChange:
        vectors = np.zeros((0, 0), dtype=np.float32) if added is None else np.asarray(added, dtype=np.float32)
        return cls(collection, old_version, new_version, frozenset(map(doc_tag, changed_doc_ids)), vectors)

    def keeps(self, doc_tags: Iterable[str], vector: np.ndarray | None, reach: float) -> bool:
        """Whether an entry citing ``doc_tags``, asked as ``vector``, still holds in the new version."""
        if not self.changed_tags.isdisjoint(doc_tags):
            return False
        if not len(self.added):
            return True
        if vector is None or len(vector) != self.added.shape[1]:
            return False
        return float(np.max(self.added @ np.asarray(vector, dtype=np.float32))) < reach


@dataclass(frozen=True)
class Carried:
    kept: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int | float | None]:
        total = self.kept + self.dropped
        return {"kept": self.kept, "dropped": self.dropped,
                "kept_share": round(self.kept / total, 4) if total else None}
