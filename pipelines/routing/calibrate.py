"""Threshold calibration: pick the router threshold (or the cascade's confidence threshold)
that meets a target on labelled data, and write it into the router artifact.

Targets (one of):
- ``large_share``: at most this share of queries go to the large tier (a cost cap);
- ``quality``: the fewest large calls whose quality reaches this fraction of large-only
  quality (e.g. 0.95 = 95% of what always using the large tier achieves).

Calibrate on data the router was not trained on (``ragroute router train --quality ...``
uses the cross-validated scores of its own training data for that reason: a kNN router scores
its training queries with themselves as neighbours).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common.errors import BadRequest
from pipelines.config import CASCADE_SIGNALS
from pipelines.routing import curves
from pipelines.routing.artifact import CascadeSettings, RouterArtifact, sha256_path

log = logging.getLogger(__name__)


def _target(large_share: float | None, quality: float | None) -> tuple[str, float]:
    if (large_share is None) == (quality is None):
        raise BadRequest("target", "give exactly one of --large-share or --quality")
    if large_share is not None:
        if not 0.0 <= large_share <= 1.0:
            raise BadRequest("large_share", f"{large_share} is not within [0, 1]")
        return "large_share", large_share
    assert quality is not None
    if not 0.0 < quality <= 1.5:
        raise BadRequest("quality", f"{quality} is not within (0, 1.5] (a fraction of large-only quality)")
    return "quality", quality


def pick(scores: Sequence[float], small: Sequence[float], large: Sequence[float], *,
         large_share: float | None = None, quality: float | None = None) -> curves.Calibration:
    target, value = _target(large_share, quality)
    if target == "large_share":
        return curves.threshold_for_share(scores, small, large, value)
    return curves.threshold_for_quality(scores, small, large, value)


def calibrate_router(artifact: RouterArtifact, scores: Sequence[float], small: Sequence[float],
                     large: Sequence[float], *, large_share: float | None = None, quality: float | None = None,
                     data: Path | None = None, scored: str = "") -> RouterArtifact:
    """The artifact with its threshold set for the target on (scores, per-tier quality)."""
    cal = pick(scores, small, large, large_share=large_share, quality=quality)
    # the threshold is a score the router produced; keep it within the manifest's [0, 1]
    threshold = float(min(1.0, max(0.0, cal.threshold)))
    info = {**cal.as_dict(), "threshold": round(threshold, 6), "scored": scored,
            "data": str(data) if data else "", "data_sha256": sha256_path(Path(data)) if data else ""}
    log.info("router threshold %.4f: %.1f%% large calls, quality %.4f (large-only %.4f, small-only %.4f) on %d queries",
             threshold, 100 * cal.large_share, cal.quality, cal.large_only, cal.small_only, cal.n)
    return artifact.with_manifest(threshold=threshold, calibration=info)


# -- cascade -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CascadeRow:
    small_score: float
    large_score: float
    signals: dict[str, float]  # the small tier's answer: the confidence signals the row has
    query: str = ""  # the question (a routed start scores it with the router)


def load_cascade_rows(path: Path) -> list[CascadeRow]:
    """JSONL: both tiers' quality on a question (small_score, large_score), the small tier's
    confidence signals for it (any of CASCADE_SIGNALS: logprob_mean, logprob_min, grounded,
    selfcheck) and, for a routed start, the question (``query``)."""
    path = Path(path)
    if not path.is_file():
        raise BadRequest("data", f"{path} does not exist")
    from pipelines.routing.train import jsonl_objects

    rows = []
    for where, row in jsonl_objects(path):
        try:
            small, large = float(row["small_score"]), float(row["large_score"])
            signals = {k: float(row[k]) for k in CASCADE_SIGNALS if row.get(k) is not None}
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(where, "needs numbers small_score and large_score, and the signals "
                             f"({', '.join(CASCADE_SIGNALS)}) as numbers ({type(exc).__name__}: {exc})") from None
        if not signals:
            raise BadRequest(where, f"has none of the confidence signals {', '.join(CASCADE_SIGNALS)}")
        if not np.isfinite([small, large, *signals.values()]).all():
            raise BadRequest(where, "scores and signals must be finite numbers")
        query = row.get("query")
        rows.append(CascadeRow(small, large, signals, query if isinstance(query, str) else ""))
    if len(rows) < 10:
        raise BadRequest("data", f"{path} has {len(rows)} rows; at least 10 are needed")
    return rows


def _signal_values(rows: Sequence[CascadeRow], signal: str) -> list[float]:
    """``signal`` of every row; a signal that is not one, or that rows lack, is a BadRequest."""
    if signal not in CASCADE_SIGNALS:
        raise BadRequest("signal", f"{signal!r} is not one of {', '.join(CASCADE_SIGNALS)}")
    missing = sum(signal not in r.signals for r in rows)
    if missing:
        raise BadRequest("data", f"{missing} of {len(rows)} rows have no {signal}")
    return [r.signals[signal] for r in rows]


def escalation_scores(confidence: Sequence[float]) -> np.ndarray:
    """Lower confidence escalates first: the curve's score is the negated confidence."""
    return -np.asarray(confidence, dtype=np.float64)


def calibrate_cascade(artifact: RouterArtifact, rows: Sequence[CascadeRow], *, signal: str = "logprob_mean",
                      large_share: float | None = None, quality: float | None = None,
                      data: Path | None = None) -> RouterArtifact:
    """The artifact with cascade settings: escalate when ``signal`` < threshold."""
    conf = _signal_values(rows, signal)
    cal = pick(escalation_scores(conf), [r.small_score for r in rows], [r.large_score for r in rows],
               large_share=large_share, quality=quality)
    # escalate when confidence < threshold, i.e. -confidence > -threshold; the curve's cut-off
    # sends scores >= cut, so the confidence threshold sits just above -cut
    threshold = float(np.nextafter(-cal.threshold, np.inf))
    info = {**cal.as_dict(), "threshold": threshold, "data": str(data) if data else "",
            "data_sha256": sha256_path(Path(data)) if data else ""}
    log.info("cascade threshold %s < %.4f: %.1f%% escalated, quality %.4f (large-only %.4f) on %d answers",
             signal, threshold, 100 * cal.large_share, cal.quality, cal.large_only, cal.n)
    return artifact.with_manifest(cascade=CascadeSettings(signal=signal, threshold=threshold, calibration=info))


# -- cascade with a routed start -----------------------------------------------------------------
def routed_order(route_scores: Sequence[float], confidence: Sequence[float], threshold: float) -> np.ndarray:
    """The curve scores of a routed cascade: a question goes to the large tier when the router
    sends it there (score >= the route threshold) or the small answer is escalated (confidence <
    ``threshold``), so escalated answers come first (2.0, above any router score in [0, 1]) and
    the rest in router order; a cut-off t within [0, 1] is the route threshold."""
    return np.where(np.asarray(confidence, dtype=np.float64) < threshold, 2.0,
                    np.asarray(route_scores, dtype=np.float64))


@dataclass(frozen=True)
class RoutedCalibration:
    threshold: float  # escalate when confidence < this
    route_threshold: float  # start at the large tier when the router score >= this
    calibration: curves.Calibration  # on the routed order at ``threshold``
    small_share: float  # questions the small tier answers first (not routed to large directly)
    escalated: float  # share of all questions escalated after the small answer

    def apply(self, route_scores: Sequence[float], confidence: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """What the service does with these thresholds: (routed straight to large, answered by
        the large tier at all) per question."""
        direct = np.asarray(route_scores, dtype=np.float64) >= self.route_threshold
        return direct, direct | (np.asarray(confidence, dtype=np.float64) < self.threshold)


def _candidates(confidence: np.ndarray, signal: str, most: int = 64) -> np.ndarray:
    """Cascade thresholds worth trying: at most ``most`` cut-offs between the observed values,
    from escalating nothing to escalating every answer, within the signal's range."""
    lo, hi = CASCADE_SIGNALS[signal]
    values = np.unique(confidence)
    if len(values) > most:
        values = np.unique(np.quantile(values, np.linspace(0, 1, most)))
    return np.unique(np.clip(np.concatenate([values, [np.nextafter(values[-1], np.inf)]]), lo, hi))


def pick_routed(route_scores: Sequence[float], confidence: Sequence[float], small: Sequence[float],
                large: Sequence[float], *, signal: str, large_share: float | None = None,
                quality: float | None = None) -> RoutedCalibration:
    """Both thresholds of a routed cascade for the target: for each candidate cascade threshold,
    the route threshold that meets it; kept is the pair with the fewest large calls (quality
    target) or the best quality (share target), then the fewest small calls."""
    target, value = _target(large_share, quality)
    r = np.asarray(route_scores, dtype=np.float64)
    conf = np.asarray(confidence, dtype=np.float64)
    if not (len(r) == len(conf) == len(small) == len(large)) or not len(r):
        raise ValueError("route scores, confidences and per-tier quality must be equal-length and non-empty")
    best: tuple[tuple[float, float], RoutedCalibration] | None = None
    for c in _candidates(conf, signal):
        cal = pick(routed_order(r, conf, c), small, large, large_share=large_share, quality=quality)
        found = RoutedCalibration(float(c), float(min(1.0, max(0.0, cal.threshold))), cal, 0.0, 0.0)
        direct, to_large = found.apply(r, conf)
        found = replace(found, small_share=float(1 - direct.mean()), escalated=float((to_large & ~direct).mean()))
        met = target == "large_share" or cal.quality >= value * cal.large_only - 1e-12
        key = ((cal.large_share if met else 2.0) if target == "quality" else -cal.quality, found.small_share)
        if best is None or key < best[0]:
            best = (key, found)
    assert best is not None
    return best[1]


def calibrate_routed_cascade(artifact: RouterArtifact, rows: Sequence[CascadeRow], route_scores: Sequence[float],
                             *, signal: str, large_share: float | None = None, quality: float | None = None,
                             data: Path | None = None) -> RouterArtifact:
    """The artifact with a routed cascade: start at the large tier when the router's score of the
    question (``route_scores``, one per row) reaches the route threshold, else answer with the
    small tier and escalate when ``signal`` < threshold; both thresholds chosen for the target."""
    found = pick_routed(route_scores, _signal_values(rows, signal), [r.small_score for r in rows],
                        [r.large_score for r in rows], signal=signal, large_share=large_share, quality=quality)
    cal = found.calibration
    info = {**cal.as_dict(), "threshold": found.threshold, "route_threshold": round(found.route_threshold, 6),
            "small_share": round(found.small_share, 6), "escalated": round(found.escalated, 6),
            "data": str(data) if data else "", "data_sha256": sha256_path(Path(data)) if data else ""}
    log.info("routed cascade: large from router score >= %.4f, else escalate when %s < %.4f: %.1f%% large calls "
             "(%.1f%% escalated), %.1f%% small calls, quality %.4f (large-only %.4f) on %d questions",
             found.route_threshold, signal, found.threshold, 100 * cal.large_share, 100 * found.escalated,
             100 * found.small_share, cal.quality, cal.large_only, cal.n)
    return artifact.with_manifest(cascade=CascadeSettings(
        signal=signal, threshold=found.threshold, start="routed", route_threshold=found.route_threshold,
        calibration=info))
