"""Semantic-cache hit verifier: a second check after the vector threshold.

A cached question can be close in embedding space and still need another answer: "enable
2FA" vs "disable 2FA", "top 5" vs "top 10", "import from A to B" vs "from B to A", "in
Python" vs "in Java". The verifier runs in two steps, and says which one decided:

1. **Near-miss rules** (``vetoes``): named checks that reject a candidate outright, with the
   reason: antonyms, different numbers, one side negated. These are product decisions (the
   answer to "top 5" is not the answer to "top 10"), not learnt.
2. **A learned duplicate check** that estimates P(same question) from two scores:
   - *features*: logistic regression on the cosine, named lexical features (word overlap,
     different names, word order, question type, ...) and the two embeddings' interactions
     (|u - v| and u * v, as in Sentence-BERT's classifier head);
   - *the pair model* (:mod:`pipelines.query.cache.pairmodel`): MiniLM fine-tuned as a
     cross-encoder that reads both questions together.
   A two-input logistic regression, fitted on a calibration slice the two were not trained
   on, weighs them. The candidate is accepted when P is at least ``accept_probability``, or
   when the cosine alone is at least ``sure_cosine`` (near-identical wording, as precise on
   the tune split as the model's accepted pairs). The reason lists the probability and the
   parts that weighed most for or against. With the pair model switched off
   (``RAGROUTE_CACHE_PAIR_MODEL=off``) the features decide alone, with their own cut.

Weights, vetoes, the cosine floor and the acceptance probabilities are in ``verifier.json``
(the pair model's tensors in ``verifier-pair.npz``, whose sha256 it records), fitted on the
QQP tune split by ``python -m evals.cache_verifier --train`` (the test split is only used for
the reported numbers), with a manifest checked at load time.

    >>> v = HitVerifier.load()                                   # doctest: +SKIP
    >>> v.check("How do I enable 2FA?", "How do I disable 2FA?", 0.93).reason   # doctest: +SKIP
    "rejected: antonyms differ ('enable' vs 'disable')"
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ArtifactError, ConfigError
from pipelines.query.cache.features import (EMBEDDING_GROUP, FEATURES, PAIR_GROUP, RULES, Question,
                                            embedding_features, question_features)

log = logging.getLogger(__name__)

WEIGHTS_FILE = Path(__file__).with_name("verifier.json")
FORMAT_VERSION = 4

@dataclass(frozen=True)
class PairScorer:
    """Logistic regression over standardised [named features, embedding interactions]."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    accept_probability: float
    sure_cosine: float = 1.0  # from this cosine on, the wording is near-identical: accepted without the model

    def __post_init__(self) -> None:
        n = len(FEATURES)
        if not (self.mean.shape == self.scale.shape == self.weights.shape) or self.weights.ndim != 1 \
                or self.weights.shape[0] <= n or (self.weights.shape[0] - n) % 2:
            raise ArtifactError(f"verifier weights have shape {self.weights.shape}; expected {n} named features "
                                "plus 2 x the embedding dimension")

    @property
    def dimension(self) -> int:
        return (self.weights.shape[0] - len(FEATURES)) // 2

    def logit(self, named: np.ndarray, emb: np.ndarray) -> tuple[float, dict[str, float]]:
        """The logit of P(same question) and each named feature's (and the embeddings') share of it."""
        x = (np.concatenate([named, emb]) - self.mean) / self.scale
        parts = x * self.weights
        n = len(FEATURES)
        named_parts = dict(zip(FEATURES, parts[:n].tolist(), strict=True))
        return float(parts.sum() + self.bias), named_parts | {EMBEDDING_GROUP: float(parts[n:].sum())}

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "weights": self.weights.tolist(),
                "bias": self.bias, "accept_probability": self.accept_probability, "sure_cosine": self.sure_cosine,
                "features": list(FEATURES)}

    @classmethod
    def from_json(cls, d: dict) -> PairScorer:
        if d.get("features") != list(FEATURES):
            raise ArtifactError(f"verifier was trained on features {d.get('features')}, this code computes "
                                f"{list(FEATURES)}; retune with `python -m evals.cache_verifier --train`")
        return cls(np.array(d["mean"]), np.array(d["scale"]), np.array(d["weights"]), float(d["bias"]),
                   float(d["accept_probability"]), float(d["sure_cosine"]))


def _sigmoid(z: float) -> float:
    return float(1 / (1 + np.exp(-np.clip(z, -50, 50))))


@dataclass(frozen=True)
class PairStack:
    """How the pair model's logit joins the features' one: P = sigmoid(features_weight * z_features
    + pair_weight * z_pair + bias), with its own acceptance cut and near-identical cosine."""

    model: Any  # pipelines.query.cache.pairmodel.PairModel (anything with .logits(pairs) -> array)
    features_weight: float
    pair_weight: float
    bias: float
    accept_probability: float
    sure_cosine: float = 1.0

    def combine(self, z_features: float, features_parts: dict[str, float], z_pair: float
                ) -> tuple[float, dict[str, float]]:
        parts = {k: self.features_weight * v for k, v in features_parts.items()}
        z = self.features_weight * z_features + self.pair_weight * z_pair + self.bias
        return _sigmoid(z), {PAIR_GROUP: self.pair_weight * z_pair} | parts


def _model_name(name: str) -> str:
    """'sentence-transformers/all-MiniLM-L6-v2' and 'all-MiniLM-L6-v2' name the same model."""
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def _explain(parts: dict[str, float], k: int = 3) -> str:
    top = sorted(parts.items(), key=lambda kv: -abs(kv[1]))[:k]
    return ", ".join(f"{FEATURES.get(name, name)} {value:+.1f}" for name, value in top)


def _load_pair(spec: dict, path: Path) -> PairStack:
    from pipelines.query.cache.pairmodel import PairModel

    model = PairModel(path.with_name(spec["file"]), spec["sha256"], int(spec["rank"]))
    return PairStack(model, float(spec["features_weight"]), float(spec["pair_weight"]), float(spec["bias"]),
                     float(spec["accept_probability"]), float(spec["sure_cosine"]))


@dataclass(frozen=True)
class Verdict:
    accept: bool
    reason: str
    probability: float | None = None  # P(same question) from the learned check, when it ran


class HitVerifier:
    def __init__(self, rules: dict[str, float], vector_threshold: float, scorer: PairScorer | None = None,
                 pair: PairStack | None = None) -> None:
        unknown = set(rules) - set(RULES)
        if unknown:
            raise ArtifactError(f"unknown verifier rules {sorted(unknown)}; known: {', '.join(RULES)}")
        if pair is not None and scorer is None:
            raise ArtifactError("the pair model joins the features' score: it needs the scorer too")
        self.rules = rules  # near-miss rules that veto (rule -> cut-off)
        self.vector_threshold = vector_threshold  # the cosine floor the verifier was tuned with
        self.scorer = scorer
        self.pair = pair

    @property
    def accept_probability(self) -> float | None:
        """The cut on P(same question) in use (the pair model's when it runs)."""
        return self.pair.accept_probability if self.pair else self.scorer.accept_probability if self.scorer else None

    @property
    def sure_cosine(self) -> float:
        return self.pair.sure_cosine if self.pair else self.scorer.sure_cosine if self.scorer else 1.0

    @classmethod
    def load(cls, path: Path = WEIGHTS_FILE, embedding_model: str | None = None,
             pair_model: bool = True, accept_probability: float | None = None) -> HitVerifier:
        """The shipped (or given) settings, checked against their manifest. With
        ``embedding_model`` other than the one the learned check was fitted on, that check is
        left out (its weights mean nothing for other embeddings) and only the rules run. With
        ``pair_model`` false, or settings without one, the features decide alone.
        ``accept_probability`` replaces the calibrated cut on P(same question) of whichever
        learned check runs (RAGROUTE_CACHE_ACCEPT_PROBABILITY: a deployment whose questions are
        worded unlike Quora's can trade precision for hits)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read verifier settings {path}: {exc}") from None
        manifest = data.get("manifest", {})
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path} has format {manifest.get('format_version')}, expected {FORMAT_VERSION}; "
                                "retune with `python -m evals.cache_verifier --train`")
        body = json.dumps(data.get("model"), sort_keys=True).encode()
        if hashlib.sha256(body).hexdigest() != manifest.get("model_sha256"):
            raise ArtifactError(f"{path}: settings do not match the sha256 in its manifest")
        model = data["model"]
        scorer = PairScorer.from_json(model["scorer"]) if model.get("scorer") else None
        trained_on = manifest.get("embedding_model")
        if scorer is not None and embedding_model and _model_name(embedding_model) != _model_name(trained_on or ""):
            log.warning("cache verifier: the learned check was fitted on %s embeddings, the pipeline uses %s; "
                        "running the near-miss rules only (retune: python -m evals.cache_verifier --train)",
                        trained_on, embedding_model)
            scorer = None
        pair = _load_pair(model["pair_model"], path) if pair_model and scorer and model.get("pair_model") else None
        if accept_probability is not None:
            if not 0.0 <= accept_probability <= 1.0:
                raise ConfigError(f"accept_probability must be within [0, 1], got {accept_probability}")
            if pair is not None:
                pair = replace(pair, accept_probability=accept_probability)
            elif scorer is not None:
                scorer = replace(scorer, accept_probability=accept_probability)
            else:
                log.warning("cache verifier: no learned check runs, so the accept probability %.2f has no effect",
                            accept_probability)
        return cls(model["rules"], model["vector_threshold"], scorer, pair)

    def reasons(self, cached: str, query: str) -> list[str]:
        return self._reasons(Question.of(cached), Question.of(query))

    def _reasons(self, a: Question, b: Question) -> list[str]:
        return [r for name, cut in self.rules.items() if (r := RULES[name](a, b, cut))]

    def check_many(self, items: Sequence[tuple[str, str, float, np.ndarray | None, np.ndarray | None]]
                   ) -> list[Verdict]:
        """``check`` for each (cached, query, cosine, cached vector, query vector), with one batched
        pair-model pass over the pairs that need it (the cache checks its candidates this way)."""
        logits: dict[tuple[str, str], float] = {}
        if self.pair is not None:
            need = list(dict.fromkeys((a, b) for a, b, sim, _, _ in items if self.needs_pair(a, b, sim)))
            if need:
                logits = dict(zip(need, self.pair.model.logits(need).tolist(), strict=True))
        return [self.check(a, b, sim, u, v, logits.get((a, b))) for a, b, sim, u, v in items]

    def needs_pair(self, cached: str, query: str, similarity: float) -> bool:
        """Whether checking this pair runs the pair model: below the near-identical cosine, when
        no near-miss rule has rejected it already."""
        return self.pair is not None and similarity < self.sure_cosine and not self.reasons(cached, query)

    def check(self, cached: str, query: str, similarity: float, cached_vector: np.ndarray | None = None,
              query_vector: np.ndarray | None = None, pair_logit: float | None = None) -> Verdict:
        """``pair_logit``: the pair model's logit for (cached, query) when the caller already has
        it (the eval scores pairs in batches); computed here otherwise."""
        a, b = Question.of(cached), Question.of(query)
        found = self._reasons(a, b)
        if found:
            return Verdict(False, "rejected: " + "; ".join(found))
        rules = f"no near-miss rule fired (checked: {', '.join(self.rules) or 'none'})"
        if self.scorer is None:
            return Verdict(True, f"accepted: cosine {similarity:.3f}, {rules}")
        dim = self.scorer.dimension
        p = parts = None
        sure = self.sure_cosine
        if cached_vector is not None and query_vector is not None and len(cached_vector) == len(query_vector) == dim:
            z, parts = self.scorer.logit(question_features(a, b, similarity),
                                         embedding_features(cached_vector, query_vector))
            if self.pair is None:
                p = _sigmoid(z)
            elif similarity < sure:  # near-identical wording does not need the pair model's forward pass
                if pair_logit is None:
                    pair_logit = float(self.pair.model.logits([(cached, query)])[0])
                p, parts = self.pair.combine(z, parts, pair_logit)
        if similarity >= sure:
            known = "" if p is None else f"; P(same question) {p:.2f}"
            return Verdict(True, f"accepted: cosine {similarity:.3f} >= {sure:.2f} (near-identical "
                                 f"wording{known}), {rules}", p)
        if p is None:
            # No usable embeddings (another embedding model): the rules alone cannot vouch for it.
            return Verdict(False, f"rejected: the learned check needs both {dim}-d embeddings; {rules}")
        cut = self.accept_probability
        if p >= cut:
            return Verdict(True, f"accepted: P(same question) {p:.2f} >= {cut:.2f} (cosine {similarity:.3f}; "
                                 f"{_explain(parts)}); {rules}", p)
        return Verdict(False, f"rejected: P(same question) {p:.2f} < {cut:.2f} (cosine {similarity:.3f}; "
                              f"{_explain(parts)})", p)
