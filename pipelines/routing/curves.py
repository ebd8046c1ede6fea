"""Cost-quality curves of a router, and the thresholds that hit a target on them (pure numpy).

A router scores each query (higher = the small tier is less likely to suffice). Sending the
queries with the highest scores to the large tier, for every possible share of large calls,
traces the cost-quality curve. With per-query quality of both tiers (1/0 correctness, or a
score such as token F1) the curve is exact for the labelled set:

    quality(share) = mean(small quality) + sum of (large - small) over the top share, / n

Summary numbers (the RouteLLM paper's):
- PGR(share) = (quality - small-only) / (large-only - small-only): performance gap recovered;
- APGR = the area under PGR over share in [0, 1] (0.5 for a random router);
- the smallest large share whose quality reaches a target, e.g. 95% of large-only quality.

Ties in score are broken by input order (stable sort), so curves are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def _arrays(scores: Sequence[float], small: Sequence[float], large: Sequence[float]):
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(small, dtype=np.float64)
    b = np.asarray(large, dtype=np.float64)
    if not (s.shape == a.shape == b.shape) or s.ndim != 1 or len(s) == 0:
        raise ValueError(f"scores, small and large must be equal-length non-empty 1-d arrays "
                         f"(got {s.shape}, {a.shape}, {b.shape})")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return s, a, b


@dataclass(frozen=True)
class Curve:
    """Quality at every large-tier share k/n, k = 0..n, and the score cut-off for each k."""

    share: np.ndarray  # (n+1,)
    quality: np.ndarray  # (n+1,)
    thresholds: np.ndarray  # (n+1,): route to large when score >= thresholds[k] sends k queries (ties aside)
    small_only: float
    large_only: float

    def pgr(self) -> np.ndarray:
        gap = self.large_only - self.small_only
        return (self.quality - self.small_only) / gap if gap > 0 else np.zeros_like(self.quality)

    def apgr(self) -> float:
        """Average performance gap recovered: the mean PGR over share in [0, 1]."""
        pgr = self.pgr()
        return float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(self.share)))

    def share_for(self, quality: float) -> float | None:
        """The smallest large share whose quality reaches ``quality`` (None if never)."""
        ok = np.nonzero(self.quality >= quality - 1e-12)[0]
        return float(self.share[ok[0]]) if len(ok) else None

    def quality_at(self, share: float) -> float:
        k = int(round(share * (len(self.share) - 1)))
        return float(self.quality[min(max(k, 0), len(self.quality) - 1)])

    def points(self, n: int = 101) -> list[dict[str, float]]:
        """The curve resampled at ``n`` evenly spaced shares (for JSON and plots)."""
        grid = np.linspace(0.0, 1.0, n)
        return [{"large_share": round(float(x), 4), "quality": round(self.quality_at(float(x)), 6)} for x in grid]


def curve(scores: Sequence[float], small: Sequence[float], large: Sequence[float]) -> Curve:
    s, a, b = _arrays(scores, small, large)
    order = np.argsort(-s, kind="stable")
    n = len(s)
    gained = np.concatenate([[0.0], np.cumsum((b - a)[order])])
    quality = (a.sum() + gained) / n
    # thresholds[k]: the k-th highest score (the score of the last query sent to large); for
    # k = 0, just above the highest score, so that nothing goes to large.
    sorted_scores = s[order]
    thresholds = np.concatenate([[np.nextafter(sorted_scores[0], np.inf)], sorted_scores])
    return Curve(share=np.arange(n + 1) / n, quality=quality, thresholds=thresholds,
                 small_only=float(a.mean()), large_only=float(b.mean()))


def random_curve(small: Sequence[float], large: Sequence[float]) -> Curve:
    """The expected curve of a router that picks the large tier at random: a straight line."""
    _, a, b = _arrays(np.zeros(len(small)), small, large)
    n = len(a)
    share = np.arange(n + 1) / n
    quality = a.mean() + share * (b.mean() - a.mean())
    return Curve(share=share, quality=quality, thresholds=np.full(n + 1, np.nan),
                 small_only=float(a.mean()), large_only=float(b.mean()))


def oracle_scores(small: Sequence[float], large: Sequence[float]) -> np.ndarray:
    """Scores of a router that knows the answers: the quality gained by going large."""
    return np.asarray(large, dtype=np.float64) - np.asarray(small, dtype=np.float64)


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen on labelled data, with what it achieved there."""

    target: str  # "large_share" | "quality"
    value: float  # the target: a share of large calls, or a fraction of large-only quality
    threshold: float
    large_share: float
    quality: float
    large_only: float
    small_only: float
    n: int

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _calibration(c: Curve, k: int, target: str, value: float) -> Calibration:
    n = len(c.share) - 1
    return Calibration(target=target, value=value, threshold=float(c.thresholds[k]),
                       large_share=float(c.share[k]), quality=float(c.quality[k]),
                       large_only=c.large_only, small_only=c.small_only, n=n)


def threshold_for_share(scores: Sequence[float], small: Sequence[float], large: Sequence[float],
                        share: float) -> Calibration:
    """The threshold that sends (at most) ``share`` of the queries to the large tier."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"large share must be within [0, 1], got {share}")
    c = curve(scores, small, large)
    k = int(np.floor(share * (len(c.share) - 1) + 1e-9))
    # ties: a threshold equal to a score also sends every query with that score; step back to
    # the last cut-off that does not exceed the share
    while k > 0 and np.sum(np.asarray(scores) >= c.thresholds[k]) > k:
        k -= 1
    return _calibration(c, k, "large_share", share)


def threshold_for_quality(scores: Sequence[float], small: Sequence[float], large: Sequence[float],
                          fraction: float) -> Calibration:
    """The threshold with the fewest large calls whose quality reaches ``fraction`` of large-only
    quality (all queries go large if nothing less does)."""
    if not 0.0 < fraction <= 1.5:
        raise ValueError(f"quality fraction must be within (0, 1.5], got {fraction}")
    c = curve(scores, small, large)
    goal = fraction * c.large_only
    ok = np.nonzero(c.quality >= goal - 1e-12)[0]
    k = int(ok[0]) if len(ok) else len(c.share) - 1
    # ties: the threshold sends every query scoring >= it; take the first k where that is exactly k
    scores_arr = np.asarray(scores, dtype=np.float64)
    while k < len(c.share) - 1 and np.sum(scores_arr >= c.thresholds[k]) != k:
        k += 1
    return _calibration(c, k, "quality", fraction)
