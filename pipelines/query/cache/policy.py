"""Error-bounded semantic hits: the operator states the wrong-hit rate they accept
(``RAGROUTE_CACHE_MAX_ERROR``, default 2%), and a paraphrase is served from the cache only
where what has been *observed* shows that rate is kept, at 95% confidence. As in vCache, the
rate is over lookups: the share of answers that are wrong because the cache served them (a
fresh answer counts as right).

How a semantic candidate is decided (after the verifier's near-miss rules, which still veto
outright, and the cosine floor):

1. **Its score** is the verifier's P(same question) (or the cosine when no learned check
   runs), and falls in one of ten bands (0.0-0.1, ..., 0.9-1.0).
2. **Observations** are kept per tenant and generation settings, per band: how many lookups
   were decided there, how many candidates were checked against a fresh answer, and how many
   of those cached answers were judged wrong for the new question (:func:`answers_agree`).
   Serving every candidate scored in band b or above would make wrong hits on (their share of
   the lookups) x (their wrong rate) of lookups; a band is served when that, with the wrong
   rate's one-sided 95% Clopper-Pearson upper bound, is within the bound, and its own share
   x its own shrunk estimate ((wrong + 0.5) / (n + 1)) is too (a band no one has looked at is
   not vouched for by those above it; at least 10 comparisons at or above it). The lowest such band sets a threshold on P, learnt per
   tenant, that moves down as evidence accumulates: every candidate at or above it is served.
   The denominator counts every semantic lookup of the tenant (those with no candidate, or only
   vetoed ones, cannot be wrong hits).
3. **Each entry's own record**: an entry whose answer was judged wrong for a question scored
   P = x is never served again to questions scored at or below x (a per-entry decision
   boundary, learnt online).
4. **Where to learn from**: a candidate that is not (yet) served is answered fresh anyway, so
   comparing the fresh answer with the cached one costs no generation ("observe"). A candidate
   that would be served is, with a probability that shrinks as the upper bound falls below the
   bound, answered fresh instead and compared ("verification sample"); that is the only cost.

Statistics live with the entries (Redis hash fields, HINCRBY under one Lua script: concurrent
writers never lose an update) and survive restarts with the Redis backend.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import beta

BANDS = 10
CONFIDENCE = 0.95
MIN_SAMPLE_RATE = 0.02  # verification never stops: drift (new documents, new traffic) shows up
MIN_EVIDENCE = 10  # comparisons at or above a band before it can be served, however rare its lookups
AGREE_COSINE = 0.70  # answers at least this similar (and on the same best source) agree; see answers_agree


def band(score: float) -> int:
    return min(BANDS - 1, max(0, int(math.floor(score * BANDS))))


def upper_bound(wrong: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound on a rate seen ``wrong`` times in ``n``."""
    if n <= 0:
        return 1.0
    if wrong >= n:
        return 1.0
    return float(beta.ppf(confidence, wrong + 1, n - wrong))


def interval(wrong: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval (for reporting)."""
    if n <= 0:
        return 0.0, 1.0
    tail = (1 - confidence) / 2
    low = 0.0 if wrong == 0 else float(beta.ppf(tail, wrong, n - wrong + 1))
    high = 1.0 if wrong == n else float(beta.ppf(1 - tail, wrong + 1, n - wrong))
    return low, high


@dataclass(frozen=True)
class EntryStats:
    """What is known about one cached entry's answer for other questions."""

    verified: int = 0
    wrong: int = 0
    wrong_max: float = -1.0  # the highest score at which its answer was judged wrong (-1: never)

    def after(self, score: float, wrong: bool) -> EntryStats:
        """The record once one more comparison, at ``score``, is counted."""
        return EntryStats(self.verified + 1, self.wrong + wrong, max(self.wrong_max, score) if wrong else self.wrong_max)


@dataclass(frozen=True)
class PoolStats:
    """Observations of a tenant's (and generation settings') candidates, per score band, and of
    the verification samples (lookups that would have been hits)."""

    verified: tuple[int, ...] = (0,) * BANDS
    wrong: tuple[int, ...] = (0,) * BANDS
    samples: int = 0
    samples_wrong: int = 0
    lookups: tuple[int, ...] = (0,) * BANDS  # decisions taken per band (hits, samples and observations)
    other_lookups: int = 0  # semantic lookups with no candidate to decide on (none close, or all vetoed)

    def __add__(self, other: PoolStats) -> PoolStats:
        def add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(x + y for x, y in zip(a, b, strict=True))

        return PoolStats(add(self.verified, other.verified), add(self.wrong, other.wrong),
                         self.samples + other.samples, self.samples_wrong + other.samples_wrong,
                         add(self.lookups, other.lookups), self.other_lookups + other.other_lookups)

    def at_or_above(self, b: int) -> tuple[int, int]:
        return sum(self.verified[b:]), sum(self.wrong[b:])

    @property
    def total(self) -> int:
        return sum(self.lookups) + self.other_lookups

    def share(self, b: int, only: bool = False) -> float:
        """The share of the tenant's semantic lookups whose candidate scored in band b (or above)."""
        return (self.lookups[b] if only else sum(self.lookups[b:])) / self.total if self.total else 1.0

    def bound_at(self, b: int, confidence: float = CONFIDENCE) -> float:
        """Upper bound on the wrong-hit rate over lookups if every candidate scored in band b or
        above were served: their share of lookups x the upper bound on their wrong rate."""
        n, wrong = self.at_or_above(b)
        return self.share(b) * upper_bound(wrong, n, confidence)

    def own_estimate(self, b: int) -> float:
        """Band b's own contribution to the wrong-hit rate: its share of lookups x its wrong
        rate shrunk towards 1/2 when little is seen ((wrong + 0.5) / (n + 1))."""
        return self.share(b, only=True) * (self.wrong[b] + 0.5) / (self.verified[b] + 1)

    def vouches(self, b: int, max_error: float, confidence: float = CONFIDENCE) -> bool:
        """Whether the candidates scored in band b or above may be served (band b itself must have
        been observed): see the module's docstring, step 2."""
        return self.verified[b] > 0 and self.at_or_above(b)[0] >= MIN_EVIDENCE and \
            self.bound_at(b, confidence) <= max_error and self.own_estimate(b) <= max_error

    def serving_band(self, max_error: float, confidence: float = CONFIDENCE) -> int | None:
        """The lowest band that vouches for itself and those above it: candidates scored there or
        higher are served (None: nothing is, yet)."""
        return next((b for b in range(BANDS) if self.vouches(b, max_error, confidence)), None)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> PoolStats:
        def num(key: str) -> int:
            return int(fields.get(key, 0) or 0)

        return cls(tuple(num(f"n{b}") for b in range(BANDS)), tuple(num(f"w{b}") for b in range(BANDS)),
                   num("samples"), num("samples_wrong"), tuple(num(f"l{b}") for b in range(BANDS)), num("l_other"))

    def summary(self, max_error: float) -> dict[str, Any]:
        """For cache_stats and /metrics. The observed wrong-hit rate: the share of verification
        samples found wrong (a sample is a would-be hit) x the share of lookups served from the
        cache's current threshold, with the 95% Clopper-Pearson interval scaled alike."""
        served = self.serving_band(max_error)
        scale = self.share(served) if served is not None else 0.0
        low, high = interval(self.samples_wrong, self.samples)
        return {"lookups": self.total, "observations": sum(self.verified), "observed_wrong": sum(self.wrong),
                "verification_samples": self.samples, "verification_wrong": self.samples_wrong,
                "wrong_hit_rate": round(scale * self.samples_wrong / self.samples, 6) if self.samples else None,
                "wrong_hit_rate_ci95": [round(scale * low, 6), round(scale * high, 6)],
                "serving_from_score": None if served is None else served / BANDS,
                "wrong_hit_rate_bound": None if served is None else round(self.bound_at(served), 6)}


Action = Literal["hit", "verify", "observe"]


@dataclass(frozen=True)
class Decision:
    action: Action  # hit: serve the cached answer; verify/observe: answer fresh and compare
    reason: str
    score: float
    band: int

    @property
    def sample(self) -> bool:
        """A verification sample: a would-be hit answered fresh to check it."""
        return self.action == "verify"


@dataclass
class ErrorBoundPolicy:
    max_error: float
    confidence: float = CONFIDENCE
    min_sample_rate: float = MIN_SAMPLE_RATE
    rng: random.Random = field(default_factory=random.Random)

    def sample_rate(self, ub: float) -> float:
        """Verification rate of a would-be hit: ~1 while the bound is barely met, falling with
        the square of how far below it the upper bound is (never below ``min_sample_rate``)."""
        return max(self.min_sample_rate, min(1.0, (ub / self.max_error) ** 2))

    def _evidence(self, pool: PoolStats, b: int) -> str:
        n, wrong = pool.at_or_above(b)
        head = f"tenant's candidates at P >= {b / BANDS:.1f}: {n} verified, {wrong} wrong"
        if n == 0:
            return f"{head} (of {pool.total} lookups)"
        return (f"{head}, {pool.share(b):.0%} of {pool.total} lookups; wrong hits <= "
                f"{pool.bound_at(b, self.confidence):.3f} of lookups at {self.confidence:.0%} confidence")

    def decide(self, score: float, entry: EntryStats, pool: PoolStats) -> Decision:
        b = band(score)
        start = pool.serving_band(self.max_error, self.confidence)
        seen = f"entry verified {entry.verified} times, {entry.wrong} wrong"
        if entry.wrong_max >= score:
            return Decision("observe", f"not served: this entry's answer was judged wrong for a question scored "
                                       f"{entry.wrong_max:.2f} >= {score:.2f} ({seen}); answered fresh, compared", score, b)
        if start is None or b < start:
            serving = "nothing yet" if start is None else f"P >= {start / BANDS:.1f}"
            return Decision("observe", f"learning: {self._evidence(pool, b)}; bound {self.max_error:g} is met for "
                                       f"{serving} ({seen}); answered fresh, compared with the cached answer", score, b)
        ub = pool.bound_at(start, self.confidence)
        evidence = f"{self._evidence(pool, start)} <= bound {self.max_error:g}"
        rate = self.sample_rate(ub)
        if self.rng.random() < rate:
            return Decision("verify", f"verification sample (rate {rate:.2f}): {evidence} ({seen}); answered fresh "
                                      "to check the cached answer", score, b)
        return Decision("hit", f"hit: {evidence} ({seen})", score, b)


_CITATION = re.compile(r"\[\d+\]")


def answers_agree(cached: dict[str, Any], fresh_sources: Sequence[str], vectors: np.ndarray | None,
                  cosine: float = AGREE_COSINE) -> tuple[bool, str]:
    """Whether a cached answer is as good an answer to the new question as the fresh one: both
    were built on the same best source document (the cached answer's first source against the
    fresh ranking's) and say nearly the same thing (cosine of the two answers' embeddings,
    citation markers removed, in ``vectors``). Errs towards "differs": a right answer judged
    wrong costs hits, a wrong one judged right would hide errors from the bound. Measured on
    real answers by evals/cache_policy.py (``service_comparison``). Returns (agree, why)."""
    old = [s["doc_id"] for s in cached.get("sources", [])]
    new = list(fresh_sources)
    if not old or not new or old[0] != new[0]:
        return False, f"another best source ({old[0] if old else None} vs {new[0] if new else None})"
    if vectors is None:
        return False, f"same best source {new[0]}, answers not compared (no embeddings)"
    sim = float(np.dot(vectors[0], vectors[1]))
    return sim >= cosine, f"same best source {new[0]}, answers' cosine {sim:.2f} (agree at >= {cosine:.2f})"


def comparable(answer: str) -> str:
    """An answer as the comparison reads it: citation markers removed."""
    return _CITATION.sub("", answer).strip()
