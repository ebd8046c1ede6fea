"""Settings of the Routing service and of the cascade (read by the RAG service)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines.config.env import DEFAULT_EMBED_MODEL, _choice, _get, _num
from pipelines.config.generation import tier_profile
from pipelines.config.retrieval import EmbeddingConfig
# The cascade's signals, their defaults and starts: shared with the routing artifact, which
# records calibrated ones (a leaf module, so neither imports the other).
from pipelines.routing.signals import (CASCADE_SIGNALS, CASCADE_STARTS, DEFAULT_CASCADE_SIGNAL,
                                       DEFAULT_CASCADE_THRESHOLDS)


# The built-in router's threshold when nothing sets one, per shipped tier profile (docs/routing.md).
# cpu: 0, every question to `large` (Qwen2.5-Coder-1.5B) while it can answer in time; under load the
# 0.5B `small` tier answers what `large` cannot finish. On the in-domain QA set no signal at hand tells
# which questions the 0.5B model gets right (AUC 0.52-0.58 for the heuristic, a router trained on the
# tune half, the small answer's log-probabilities, retrieval scores), so any split loses right answers
# in proportion to what it sends down: sending half to `large` keeps 86% of its right answers
# (python -m evals.qa_routing, docs/results.md). gpu: 0.5, uncalibrated (no GPU where this was measured).
PROFILE_ROUTE_THRESHOLDS = {"cpu": 0.0, "gpu": 0.5}


@dataclass(frozen=True)
class RoutingConfig:
    router: str = "heuristic"
    router_set: bool = False
    """RAGROUTE_ROUTER was given explicitly (it must then agree with the artifact)"""
    artifact: Path | None = None
    threshold: float | None = None
    """None: the artifact's calibrated threshold, else ``default_threshold``"""
    profile: str = ""
    """the tier profile in force (pipelines/config/generation.py: tier_profile)"""
    fallback: str = ""
    """a router to use when the artifact is refused; empty = refuse to start"""
    embed_model: str = DEFAULT_EMBED_MODEL

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, embedding: EmbeddingConfig | None = None) -> RoutingConfig:
        """``embedding``: the embedding settings already read (else read here)."""
        raw_path = _get(env, "RAGROUTE_ROUTER_PATH", "")
        router = _get(env, "RAGROUTE_ROUTER", "")
        threshold = env.get("RAGROUTE_ROUTE_THRESHOLD", "").strip()
        return cls(
            router=router or ("learned" if raw_path else "heuristic"),
            router_set=bool(router),
            artifact=Path(raw_path).expanduser() if raw_path else None,
            threshold=_num(env, "RAGROUTE_ROUTE_THRESHOLD", 0.5, float, 0.0, 1.0) if threshold else None,
            profile=tier_profile(env),
            fallback=_choice(env, "RAGROUTE_ROUTER_FALLBACK", "", ("", "heuristic")),
            embed_model=(embedding or EmbeddingConfig.from_env(env)).model,
        )

    @property
    def default_threshold(self) -> float:
        """The built-in router's threshold when none is set: the tier profile's (0.5 without one)."""
        return PROFILE_ROUTE_THRESHOLDS.get(self.profile, 0.5)


@dataclass(frozen=True)
class CascadeConfig:
    signal: str = DEFAULT_CASCADE_SIGNAL
    threshold: float = DEFAULT_CASCADE_THRESHOLDS[DEFAULT_CASCADE_SIGNAL]
    source: str = "built-in default"
    start: str = "cheapest"
    """cheapest | routed (CASCADE_STARTS)"""
    route_threshold: float | None = None
    """routed start: the router score from which a question starts at the large tier; None:
    the router's own threshold"""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CascadeConfig:
        """RAGROUTE_CASCADE_SIGNAL / _THRESHOLD, else the router artifact's calibrated cascade
        settings (RAGROUTE_ROUTER_PATH), else the built-in default of the signal; the start
        (RAGROUTE_CASCADE_START, _ROUTE_THRESHOLD) likewise from the environment, else the
        artifact's calibrated cascade, else the cheapest tier."""
        signal = _choice(env, "RAGROUTE_CASCADE_SIGNAL", "", ("", *CASCADE_SIGNALS))
        start = _choice(env, "RAGROUTE_CASCADE_START", "", ("", *CASCADE_STARTS))
        route_threshold = _num(env, "RAGROUTE_CASCADE_ROUTE_THRESHOLD", None, float, 0.0, 1.0)  # type: ignore[arg-type]
        calibrated = None
        path = _get(env, "RAGROUTE_ROUTER_PATH", "")
        if path and not env.get("RAGROUTE_CASCADE_THRESHOLD", "").strip():
            from common.errors import ArtifactError
            from pipelines.routing.artifact import read_manifest

            try:  # the Routing service verifies the whole artifact and refuses a bad one
                calibrated = read_manifest(Path(path).expanduser()).cascade
            except ArtifactError:
                calibrated = None
            if calibrated is not None and signal and signal != calibrated.signal:
                calibrated = None
        if calibrated is not None:
            chosen, threshold, source = calibrated.signal, calibrated.threshold, f"calibrated, {path}"
        elif env.get("RAGROUTE_CASCADE_THRESHOLD", "").strip():
            chosen = signal or DEFAULT_CASCADE_SIGNAL
            threshold = _num(env, "RAGROUTE_CASCADE_THRESHOLD", 0.0, float, *CASCADE_SIGNALS[chosen])
            source = "RAGROUTE_CASCADE_THRESHOLD"
        else:
            chosen = signal or DEFAULT_CASCADE_SIGNAL
            threshold, source = DEFAULT_CASCADE_THRESHOLDS[chosen], "built-in default"
        if not start:
            start = calibrated.start if calibrated is not None else "cheapest"
            if route_threshold is None and calibrated is not None and start == "routed":
                route_threshold = calibrated.route_threshold
        return cls(chosen, threshold, source, start, route_threshold)
