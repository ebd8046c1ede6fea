"""Okapi BM25 (bm25s, Lucene variant) over Snowball-stemmed tokens: the lexical half of hybrid
retrieval, the lexical-only search when no query embedding is available, and the lexical score
of the hybrid reranker.

Tokens come from ``common.text.tokenize`` (its short stop-word list keeps Python keywords:
in a documentation corpus "with" or "for" is often the word that matters), then an English
Snowball stemmer, so "indexes" finds "indexing". ``evals/retrieval.py`` measured this against
the hand-written BM25 it replaced (docs/results.md, "Retrieval quality").
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import bm25s
import numpy as np
import Stemmer

from common.text import tokenize

log = logging.getLogger(__name__)

K1 = 1.2
B = 0.75


@functools.cache
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def stem(word: str) -> str:
    """The Snowball stem of one lower-cased word (``stem("indexes") == "index"``)."""
    return _stemmer().stemWord(word)


def terms(text: str) -> list[str]:
    """Stemmed BM25 terms of ``text``.

    >>> terms("Indexes of the indexing functions")
    ['index', 'index', 'function']
    """
    return _stemmer().stemWords(tokenize(text))


class Bm25Index:
    def __init__(self, documents: Sequence[str], k1: float = K1, b: float = B) -> None:
        self.n = len(documents)
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        # bm25s cannot index an empty corpus; every score is then 0.
        if self.n:
            self._bm25.index([terms(d) for d in documents], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document (0 where no query term occurs)."""
        if not self.n:
            return np.zeros(0, dtype=np.float32)
        known = [t for t in dict.fromkeys(terms(query)) if t in self._bm25.vocab_dict]
        if not known:
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(known), dtype=np.float32)

    def top(self, query: str, n: int) -> list[tuple[int, float]]:
        """(row, score) of the best ``n`` documents with a positive score, best first."""
        scores = self.scores(query)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > n:
            hits = hits[np.argpartition(-scores[hits], n - 1)[:n]]
        best = hits[np.lexsort((hits, -scores[hits]))]
        return [(int(i), float(scores[i])) for i in best]
