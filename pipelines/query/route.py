"""Route stage: score query complexity, then one shared decision step picks the tier.

A router's ``score`` estimates the probability that the small tier is NOT good enough;
``decide`` compares it with the configured threshold. Routers are looked up by name in
``ROUTERS`` (the learned router of a later issue registers there too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pipelines.errors import ConfigError
from pipelines.records import RouteDecision


@dataclass(frozen=True)
class QueryFeatures:
    """Inputs a router may use besides the text; all computed earlier in the pipeline."""

    query_vector: Sequence[float] | None = None
    retrieval_scores: Sequence[float] = field(default_factory=tuple)
    """dense (cosine) scores of the sources that will be given to the generator"""


class Router(Protocol):
    name: str

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


ROUTERS: dict[str, type] = {"heuristic": HeuristicRouter}


def make_router(name: str) -> Router:
    try:
        return ROUTERS[name]()
    except KeyError:
        raise ConfigError(f"RAGROUTE_ROUTER={name!r} is not a known router; valid: {', '.join(sorted(ROUTERS))}") from None


def decide(router: Router, query: str, features: QueryFeatures, threshold: float) -> RouteDecision:
    """The one decision step shared by all routers: score >= threshold -> large."""
    score = router.score(query, features)
    tier = "large" if score >= threshold else "small"
    reason = f"{router.name} score {score:.2f} {'>=' if tier == 'large' else '<'} threshold {threshold:.2f}: " \
             f"{router.explain(query, features)}"
    return RouteDecision(tier=tier, score=score, threshold=threshold, router=router.name, reason=reason)
