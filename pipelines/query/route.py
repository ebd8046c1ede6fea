"""Route stage: score query complexity, then one shared decision step picks the tier.

A router's ``score`` estimates the probability that the small tier is NOT good enough;
``decide`` compares it with the threshold (calibrated offline: ``ragroute router calibrate``).
Routers are looked up by name in ``ROUTERS``; unknown names are refused listing the valid ones.

- ``heuristic``: transparent features, no training;
- ``learned``: trained on labelled queries (``ragroute router train``), scores the query
  embedding the pipeline already computed. Loaded from an artifact whose manifest must match
  the pipeline's embedding model and dimension (else the service refuses to start, unless
  ``RAGROUTE_ROUTER_FALLBACK=heuristic``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from common.errors import ArtifactError, ConfigError, StageError
from common.records import RouteDecision
from pipelines.config import RoutingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryFeatures:
    """Inputs a router may use besides the text; all computed earlier in the pipeline."""

    query_vector: Sequence[float] | None = None
    retrieval_scores: Sequence[float] = field(default_factory=tuple)
    """dense (cosine) scores of the sources that will be given to the generator"""


class Router(Protocol):
    name: str
    uses_retrieval: bool
    """whether ``score`` reads ``features.retrieval_scores`` (else it can run alongside retrieval)"""

    def score(self, query: str, features: QueryFeatures) -> float: ...

    def explain(self, query: str, features: QueryFeatures) -> str: ...


_REASONING = re.compile(
    r"\b(why|explain|compare|contrast|difference between|differences|trade-?offs?|pros and cons|analy[sz]e|"
    r"evaluate|design|justify|implications?|step by step|in detail|how (?:does|do|can|would|should|to))\b",
    re.I,
)
_FACTOID = re.compile(r"^\s*(what is|what are|what does|who|when|where|which|define|name|list|is there)\b", re.I)
_CODE = re.compile(r"`|\bdef |\bclass |\w\(\)|[{}\[\]]|==|->|\bimport\b|\blambda\b")
_MATH = re.compile(r"\d\s*[-+*/^=]\s*\d|\b(calculate|compute|solve|equation|integral|derivative|probability)\b", re.I)
_MULTI = re.compile(r"\?.*\?|\b(and also|as well as|additionally|then)\b|(?:^|\s)(?:1\.|2\.|\(a\)|\(b\))", re.I | re.S)


class HeuristicRouter:
    """Transparent weighted features through a logistic; every weight is visible in ``explain``."""

    name = "heuristic"
    uses_retrieval = True
    BIAS = -1.2
    WEIGHTS = {
        "long question": 0.9,  # per full 25 words beyond the first 10
        "asks for reasoning": 1.3,
        "factoid question": -0.6,
        "code markers": 0.8,
        "math markers": 1.0,
        "several parts": 1.0,
        "weak retrieval match": 1.0,  # scaled by how far the best source is below 0.45 cosine
    }

    def _contributions(self, query: str, features: QueryFeatures) -> dict[str, float]:
        words = len(query.split())
        active = {
            "long question": max(0.0, (words - 10) / 25),
            "asks for reasoning": float(bool(_REASONING.search(query))),
            "factoid question": float(bool(_FACTOID.search(query)) and not _REASONING.search(query)),
            "code markers": float(bool(_CODE.search(query))),
            "math markers": float(bool(_MATH.search(query))),
            "several parts": float(bool(_MULTI.search(query))),
        }
        if features.retrieval_scores:
            active["weak retrieval match"] = max(0.0, 0.45 - max(features.retrieval_scores)) / 0.45
        return {k: self.WEIGHTS[k] * v for k, v in active.items() if v}

    def score(self, query: str, features: QueryFeatures) -> float:
        z = self.BIAS + sum(self._contributions(query, features).values())
        return 1 / (1 + math.exp(-z))

    def explain(self, query: str, features: QueryFeatures) -> str:
        parts = sorted(self._contributions(query, features).items(), key=lambda kv: -abs(kv[1]))
        return ", ".join(f"{name} ({value:+.2f})" for name, value in parts) or "no complexity markers"


class LearnedRouter:
    """A model trained on labelled queries (pipelines/routing/train.py) over the query embedding.

    Without a query embedding (the embed stage failed) it falls back to the heuristic's score
    and says so in ``explain``."""

    name = "learned"
    uses_retrieval = False

    def __init__(self, artifact) -> None:
        m = artifact.manifest
        self.artifact = artifact
        self.method = m.method
        self.dimension = m.dimension
        self.arrays = artifact.arrays
        self._heuristic = HeuristicRouter()
        self.reads_text = "feat_mean" in self.arrays
        if self.reads_text:
            from pipelines.routing import features

            version = int(self.arrays["feat_version"][0])
            if version != features.VERSION or self.arrays["feat_mean"].shape != (len(features.NAMES),):
                raise ArtifactError(f"router artifact was trained on text features v{version} "
                                    f"({self.arrays['feat_mean'].shape[0]} of them); this code computes "
                                    f"v{features.VERSION} ({len(features.NAMES)}): retrain it with `ragroute router train`")

    def _vector(self, features: QueryFeatures) -> np.ndarray | None:
        if not features.query_vector:
            return None
        v = np.asarray(features.query_vector, dtype=np.float32)
        if v.shape != (self.dimension,):
            raise StageError("route", f"query embedding has dimension {v.size}; the learned router expects "
                             f"{self.dimension}")
        return v

    def score(self, query: str, features: QueryFeatures) -> float:
        from pipelines.routing.train import predict

        v = self._vector(features)
        if v is None:
            return self._heuristic.score(query, features)
        feats = None
        if self.reads_text:
            from pipelines.routing.features import text_features

            feats = text_features(query)
        return float(predict(self.method, self.arrays, v, feats)[0])

    def explain(self, query: str, features: QueryFeatures) -> str:
        if not features.query_vector:
            return f"no query embedding; heuristic: {self._heuristic.explain(query, features)}"
        params = ", ".join(f"{k}={v}" for k, v in self.artifact.manifest.params.items())
        return f"{self.method} ({params}) on the query embedding" + (" and text features" if self.reads_text else "")


ROUTERS: dict[str, type] = {"heuristic": HeuristicRouter, "learned": LearnedRouter}


def make_router(name: str) -> Router:
    """A router that needs no artifact, by name."""
    if name not in ROUTERS:
        raise ConfigError(f"RAGROUTE_ROUTER={name!r} is not a known router; valid: {', '.join(sorted(ROUTERS))}")
    if name == "learned":
        raise ConfigError("RAGROUTE_ROUTER=learned needs RAGROUTE_ROUTER_PATH (an artifact from `ragroute router train`)")
    return ROUTERS[name]()


@dataclass
class LoadedRouter:
    router: Router
    threshold: float
    source: str
    """where the router and its threshold came from (logged at start-up)"""
    artifact: object | None = None


def load_router(cfg: RoutingConfig, *, dimension: int | None = None) -> LoadedRouter:
    """The configured router with its threshold: RAGROUTE_ROUTE_THRESHOLD if set, else the
    artifact's calibrated one, else the tier profile's default. A corrupt or mismatched artifact
    raises ArtifactError (the service refuses to start) unless ``cfg.fallback`` names a router to
    use instead."""
    from pipelines.routing.artifact import RouterArtifact

    if cfg.router not in ROUTERS:
        raise ConfigError(f"RAGROUTE_ROUTER={cfg.router!r} is not a known router; valid: {', '.join(sorted(ROUTERS))}")
    if cfg.artifact is None:
        router = make_router(cfg.router)
        threshold = cfg.default_threshold if cfg.threshold is None else cfg.threshold
        origin = "RAGROUTE_ROUTE_THRESHOLD" if cfg.threshold is not None else \
            f"the {cfg.profile} tiers' default, docs/routing.md" if cfg.profile else "the default"
        return LoadedRouter(router, threshold, f"{router.name} (built in), threshold {threshold:.3f} ({origin})")
    try:
        artifact = RouterArtifact.load(Path(cfg.artifact), embedding_model=cfg.embed_model, dimension=dimension)
        kind = artifact.manifest.router
        if cfg.router_set and cfg.router != kind:
            raise ConfigError(f"RAGROUTE_ROUTER={cfg.router!r} but {cfg.artifact} holds a {kind!r} router")
    except ArtifactError as exc:
        if not cfg.fallback:
            raise
        log.error("router artifact refused (%s); RAGROUTE_ROUTER_FALLBACK=%s is used instead", exc, cfg.fallback)
        router = make_router(cfg.fallback)
        threshold = cfg.default_threshold if cfg.threshold is None else cfg.threshold
        return LoadedRouter(router, threshold, f"fallback {router.name}: the artifact was refused ({exc})")
    router = LearnedRouter(artifact) if kind == "learned" else ROUTERS[kind]()
    threshold = artifact.manifest.threshold if cfg.threshold is None else cfg.threshold
    calibrated = artifact.manifest.calibration
    how = f"calibrated for {calibrated['target']}={calibrated['value']}" if calibrated else "uncalibrated"
    origin = "RAGROUTE_ROUTE_THRESHOLD" if cfg.threshold is not None else how
    return LoadedRouter(router, threshold, f"{kind} from {cfg.artifact}, threshold {threshold:.3f} ({origin})", artifact)


def router_uses_retrieval(cfg: RoutingConfig) -> bool:
    """Whether the configured router reads retrieval scores (then it runs after retrieval),
    told without loading it. An unreadable artifact: the Routing service reports that."""
    kind = cfg.router
    if cfg.artifact is not None:
        from pipelines.routing.artifact import read_manifest

        try:
            kind = read_manifest(Path(cfg.artifact)).router
        except ArtifactError:
            pass
    return bool(getattr(ROUTERS.get(kind), "uses_retrieval", True))


def decide(router: Router, query: str, features: QueryFeatures, threshold: float,
           tiers: tuple[str, str] = ("small", "large")) -> RouteDecision:
    """The one decision step shared by all routers: score >= threshold -> the large tier."""
    score = router.score(query, features)
    tier = tiers[1] if score >= threshold else tiers[0]
    reason = f"{router.name} score {score:.2f} {'>=' if tier == tiers[1] else '<'} threshold {threshold:.2f}: " \
             f"{router.explain(query, features)}"
    return RouteDecision(tier=tier, score=score, threshold=threshold, router=router.name, reason=reason)
