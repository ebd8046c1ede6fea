"""Train the learned router: query embedding -> P(the small tier is not good enough).

Labelled queries come from a JSONL or CSV file, one query per row:

    query (or prompt/text)          the question as users ask it
    small_score, large_score        quality of each tier's answer (1/0 correctness, or F1)
      -> label 1 when the large tier did better than the small one
    or small_ok                     true/false: did the small tier's answer suffice?
      -> label 1 when it did not

With both scores the label is "going large gains something" rather than "small failed": a
question both tiers get wrong is not worth a large call, and the curves in the evals count it
that way. The scores are kept, so calibration can target a share of large-tier quality.

The score is a probability: with both scores, P(large beats small) with ties counted half,
i.e. (1 + E[large - small]) / 2 for 1/0 correctness (0.5 = going large gains nothing);
with small_ok, P(the small tier fails). Methods (``--method``):
- ``knn``: the mean target of the k most similar training queries (cosine over the query
  embedding). Keeps the training embeddings (n x dim float32) in the artifact.
- ``ridge``: ridge regression of the target on the embedding and the query's standardised
  text features (pipelines/routing/features.py: length, quantities, sentences, ...), closed
  form, clipped to [0, 1].
- ``knn+ridge`` (default): the mean of the two. On RouteLLM's MMLU data it needs fewer large
  calls for 95% quality than either alone (evals/routing_offline.py, docs/results.md).
Hyper-parameters (k, alpha) are picked by cross-validated APGR on the training data (AUC when
only small_ok is given). Serving is numpy only: a dot product and a top-k over the bank.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import BadRequest
from pipelines.routing import curves, features
from pipelines.routing.artifact import RouterArtifact, RouterManifest, sha256_path

log = logging.getLogger(__name__)

METHODS = ("knn", "ridge", "knn+ridge")
DEFAULT_METHOD = "knn+ridge"
GRIDS: dict[str, list[dict[str, float]]] = {
    "knn": [{"k": k} for k in (25, 50, 100)],
    "ridge": [{"alpha": a} for a in (10.0, 30.0, 100.0)],
    "knn+ridge": [{"k": k, "alpha": a} for k in (25, 50, 100) for a in (10.0, 30.0, 100.0)],
}
MAX_QUERY_CHARS = 20_000


@dataclass(frozen=True)
class LabeledQuery:
    query: str
    label: int  # 1 = the small tier is not good enough (large did better, or small failed)
    small_score: float | None = None
    large_score: float | None = None

    @property
    def target(self) -> float:
        """What the router regresses: P(large beats small), ties half; else P(small fails)."""
        if self.small_score is not None and self.large_score is not None:
            return 0.5 + 0.5 * float(np.clip(self.large_score - self.small_score, -1.0, 1.0))
        return float(self.label)


def _truthy(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "t", "1.0"):
        return True
    if text in ("0", "false", "no", "n", "f", "0.0"):
        return False
    raise BadRequest(where, f"{value!r} is not a boolean (true/false, 1/0)")


def _number(value: object, where: str) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        x = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        x = float(_truthy(value, where))
    if not np.isfinite(x):
        raise BadRequest(where, f"{value!r} is not a finite number")
    return x


def parse_row(row: dict, where: str) -> LabeledQuery:
    query = next((row[k] for k in ("query", "prompt", "text") if row.get(k) not in (None, "")), None)
    if not isinstance(query, str) or not query.strip():
        raise BadRequest(where, "needs a non-empty 'query' (or 'prompt'/'text') field")
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(where, f"query is longer than {MAX_QUERY_CHARS} characters")
    has_scores = row.get("small_score") not in (None, "") and row.get("large_score") not in (None, "")
    if has_scores:
        small = _number(row["small_score"], f"{where}: small_score")
        large = _number(row["large_score"], f"{where}: large_score")
        return LabeledQuery(query, int(large > small), small, large)
    if row.get("small_ok") not in (None, ""):
        return LabeledQuery(query, int(not _truthy(row["small_ok"], f"{where}: small_ok")))
    raise BadRequest(where, "needs either small_score and large_score, or small_ok")


def jsonl_objects(path: Path) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for each non-empty line; a line that is not a JSON object is a
    BadRequest naming it."""
    with Path(path).open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{Path(path).name}:{i}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadRequest(where, f"not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise BadRequest(where, "each line must be a JSON object")
            yield where, row


def load_labeled(path: Path) -> list[LabeledQuery]:
    """Rows of a .jsonl or .csv file; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise BadRequest("data", f"{path} does not exist")
    rows: list[LabeledQuery] = []
    if path.suffix.lower() == ".csv":
        csv.field_size_limit(1 << 24)
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f), start=2):
                rows.append(parse_row(row, f"{path.name}:{i}"))
    else:
        rows = [parse_row(row, where) for where, row in jsonl_objects(path)]
    if len(rows) < 10:
        raise BadRequest("data", f"{path} has {len(rows)} labelled queries; at least 10 are needed")
    labels = {r.label for r in rows}
    if len(labels) < 2:
        raise BadRequest("data", f"every query in {path} has label {labels.pop()}; a router needs both kinds")
    return rows


def scores_of(rows: Sequence[LabeledQuery]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-tier quality, when every row has it (else None)."""
    if any(r.small_score is None or r.large_score is None for r in rows):
        return None
    return (np.array([r.small_score for r in rows], dtype=np.float64),
            np.array([r.large_score for r in rows], dtype=np.float64))


# -- the models ----------------------------------------------------------------------------------
def _check_method(method: str) -> None:
    if method not in METHODS:
        raise BadRequest("method", f"{method!r} is not a known method; valid: {', '.join(METHODS)}")


def _ridge_inputs(arrays: dict[str, np.ndarray], x: np.ndarray, feats: np.ndarray | None) -> np.ndarray:
    """The ridge part's inputs: the embedding, plus the standardised text features when the
    router was trained with them (artifacts from before text features have none)."""
    if "feat_mean" not in arrays:
        return x
    if feats is None:
        raise ValueError("this router reads the query text's features; pass the queries")
    return np.hstack([x, ((feats - arrays["feat_mean"]) / arrays["feat_scale"]).astype(np.float32)])


def fit(method: str, x: np.ndarray, t: np.ndarray, params: dict[str, float],
        feats: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The arrays of a trained router (what the artifact stores); ``t``: targets in [0, 1];
    ``feats``: the queries' text features (pipelines/routing/features.py) for the ridge part."""
    _check_method(method)
    x = np.asarray(x, dtype=np.float32)
    t = np.asarray(t, dtype=np.float64)
    arrays: dict[str, np.ndarray] = {}
    if "knn" in method:
        arrays |= {"bank": np.ascontiguousarray(x), "labels": t.astype(np.float32),
                   "k": np.array([int(params["k"])], dtype=np.int64)}
    if "ridge" in method:
        if feats is not None:
            arrays |= {"feat_mean": feats.mean(axis=0), "feat_scale": feats.std(axis=0) + 1e-6,
                       "feat_version": np.array([features.VERSION], dtype=np.int64)}
        z = _ridge_inputs(arrays, x, feats)
        mean_x, mean_t = z.mean(axis=0, dtype=np.float64), t.mean()
        xc = z.astype(np.float64) - mean_x
        gram = xc.T @ xc + float(params["alpha"]) * np.eye(z.shape[1])
        coef = np.linalg.solve(gram, xc.T @ (t - mean_t))
        arrays |= {"coef": coef.astype(np.float32),
                   "intercept": np.array([mean_t - mean_x @ coef], dtype=np.float32)}
    return arrays


def predict(method: str, arrays: dict[str, np.ndarray], x: np.ndarray, feats: np.ndarray | None = None
            ) -> np.ndarray:
    """Scores in [0, 1] for rows of ``x`` (L2-normalised query embeddings) and, when the router
    reads them, ``feats`` (the same queries' text features)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    parts = []
    if "knn" in method:
        bank, labels = arrays["bank"], arrays["labels"]
        k = max(1, min(int(arrays["k"][0]), len(bank)))
        sims = x @ bank.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        parts.append(labels[top].mean(axis=1).astype(np.float64))
    if "ridge" in method:
        z = _ridge_inputs(arrays, x, None if feats is None else np.atleast_2d(feats))
        parts.append(np.clip((z @ arrays["coef"]).astype(np.float64) + float(arrays["intercept"][0]), 0.0, 1.0))
    return np.mean(parts, axis=0)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    pos = np.asarray(labels) == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def cross_val_scores(method: str, x: np.ndarray, t: np.ndarray, params: dict[str, float], k: int = 5,
                     seed: int = 0, feats: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold scores: every query scored by a model that did not see it."""
    out = np.zeros(len(t), dtype=np.float64)
    for test in folds(len(t), k, seed):
        train = np.setdiff1d(np.arange(len(t)), test)
        sub = None if feats is None else feats[train]
        out[test] = predict(method, fit(method, x[train], t[train], params, sub), x[test],
                            None if feats is None else feats[test])
    return out


def _quality(cv: np.ndarray, y: np.ndarray, tiers: tuple[np.ndarray, np.ndarray] | None) -> dict[str, float]:
    m = {"auc": round(auc(cv, y), 4)}
    if tiers is not None:
        c = curves.curve(cv, *tiers)
        m["apgr"] = round(c.apgr(), 4)
        share = c.share_for(0.95 * c.large_only)
        m["large_share_for_95pct"] = None if share is None else round(share, 4)
    return m


def train(rows: Sequence[LabeledQuery], vectors: np.ndarray, *, method: str = DEFAULT_METHOD,
          params: dict[str, float] | None = None, embedding_model: str, data_path: Path | None = None,
          seed: int = 0, cv_folds: int = 5) -> tuple[RouterArtifact, np.ndarray]:
    """Fit on all rows (picking hyper-parameters by cross-validation unless given) and return
    the artifact and the out-of-fold scores of the chosen setting (for calibration)."""
    _check_method(method)
    x = np.asarray(vectors, dtype=np.float32)
    y = np.array([r.label for r in rows], dtype=np.int64)
    t = np.array([r.target for r in rows], dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(y):
        raise ValueError(f"{x.shape} vectors for {len(y)} queries")
    tiers = scores_of(rows)
    feats = features.matrix([r.query for r in rows])
    grid = [params] if params else GRIDS[method]
    tried: dict[str, dict[str, float]] = {}
    best: tuple[float, dict[str, float], np.ndarray] | None = None
    for p in grid:
        cv = cross_val_scores(method, x, t, p, cv_folds, seed, feats)
        m = _quality(cv, y, tiers)
        name = ",".join(f"{k}={v:g}" for k, v in p.items())
        tried[name] = m
        key = m.get("apgr", m["auc"])  # with per-tier quality, choose by what routing is for
        if best is None or key > best[0]:
            best = (key, p, cv)
    assert best is not None
    _, chosen, cv = best
    arrays = fit(method, x, t, chosen, feats)
    chosen_name = ",".join(f"{k}={v:g}" for k, v in chosen.items())
    manifest = RouterManifest(
        router="learned", method=method, embedding_model=embedding_model, dimension=int(x.shape[1]),
        params=dict(chosen),
        training={"data": str(data_path) if data_path else "",
                  "data_sha256": sha256_path(Path(data_path)) if data_path else "",
                  "n": len(y), "positives": int(y.sum()),
                  "target": "P(large beats small), ties half" if tiers is not None else "P(small fails)",
                  "seed": seed, "cv_folds": cv_folds},
        metrics={"cross_validated": tried[chosen_name], "grid": tried},
    )
    log.info("trained %s router (%s) on %d queries: %s", method, chosen_name, len(y), tried[chosen_name])
    return RouterArtifact(manifest, arrays), cv
