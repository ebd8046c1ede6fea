"""Okapi BM25 over an inverted index: lexical search when no query embedding is available,
and the lexical half of the hybrid reranker."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from pipelines.text import tokenize


class Bm25Index:
    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.n = len(documents)
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        lengths = np.zeros(self.n, dtype=np.float32)
        for i, doc in enumerate(documents):
            tokens = tokenize(doc)
            lengths[i] = len(tokens)
            for term, count in Counter(tokens).items():
                postings[term].append((i, count))
        self.lengths = lengths
        self.avg_len = float(lengths.mean()) if self.n and lengths.mean() > 0 else 1.0
        self.postings = {t: (np.array([r for r, _ in p]), np.array([c for _, c in p], dtype=np.float32))
                         for t, p in postings.items()}

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document (0 where no query term occurs)."""
        out = np.zeros(self.n, dtype=np.float32)
        for term in set(tokenize(query)):
            if term not in self.postings:
                continue
            rows, tf = self.postings[term]
            idf = math.log(1 + (self.n - len(rows) + 0.5) / (len(rows) + 0.5))
            norm = self.k1 * (1 - self.b + self.b * self.lengths[rows] / self.avg_len)
            out[rows] += idf * tf * (self.k1 + 1) / (tf + norm)
        return out

    def top(self, query: str, n: int) -> list[tuple[int, float]]:
        """(row, score) of the best ``n`` documents with a positive score, best first."""
        scores = self.scores(query)
        hits = np.flatnonzero(scores > 0)
        best = hits[np.argsort(-scores[hits], kind="stable")][:n]
        return [(int(i), float(scores[i])) for i in best]
