"""Fuse a dense and a lexical ranking of the same chunks into one (hybrid retrieval).

Two rules, both measured by ``evals/retrieval.py``:

- ``rrf``: reciprocal rank fusion, sum of ``1 / (k + rank)`` over the lists a chunk appears in
  (Cormack et al. 2009). Needs no score calibration.
- ``score``: a convex mix of the two scores, each min-max normalized over its own list;
  ``weight`` is the dense share. A chunk missing from a list scores that list's minimum.

Inputs are ``(row, score)`` pairs best first; the output is ``(row, fused score)`` best first,
ties broken by row so the order is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Fusion = Literal["rrf", "score"]


def rrf(rankings: Sequence[Sequence[tuple[int, float]]], k: float = 60.0) -> list[tuple[int, float]]:
    """
    >>> rrf([[(1, 0.9), (2, 0.8)], [(2, 7.0), (3, 5.0)]], k=1)
    [(2, 0.8333333333333333), (1, 0.5), (3, 0.3333333333333333)]
    """
    if k <= 0:
        raise ValueError(f"rrf k ({k}) must be > 0")
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (row, _) in enumerate(ranking, 1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda rs: (-rs[1], rs[0]))


def _minmax(ranking: Sequence[tuple[int, float]]) -> dict[int, float]:
    if not ranking:
        return {}
    values = [s for _, s in ranking]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return {row: 1.0 for row, _ in ranking}
    return {row: (s - lo) / (hi - lo) for row, s in ranking}


def score_fusion(dense: Sequence[tuple[int, float]], lexical: Sequence[tuple[int, float]],
                 weight: float = 0.5) -> list[tuple[int, float]]:
    """
    >>> score_fusion([(1, 0.9), (2, 0.5)], [(2, 8.0), (3, 4.0)], weight=0.6)
    [(1, 0.6), (2, 0.4), (3, 0.0)]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"score fusion weight ({weight}) must be in [0, 1]")
    d, lx = _minmax(dense), _minmax(lexical)
    fused = {row: weight * d.get(row, 0.0) + (1 - weight) * lx.get(row, 0.0) for row in d.keys() | lx.keys()}
    return sorted(fused.items(), key=lambda rs: (-rs[1], rs[0]))


def fuse(dense: Sequence[tuple[int, float]], lexical: Sequence[tuple[int, float]], *, method: Fusion,
         rrf_k: float = 60.0, weight: float = 0.5) -> list[tuple[int, float]]:
    if method == "rrf":
        return rrf([dense, lexical], rrf_k)
    if method == "score":
        return score_fusion(dense, lexical, weight)
    raise ValueError(f"fusion method {method!r} is not one of rrf, score")
