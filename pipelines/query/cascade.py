"""Cascade step: after a tier answered, keep its answer or escalate to the next tier.

Escalate when the answer's confidence signal is below the calibrated threshold (``ragroute
router calibrate --cascade``) and the time left can fit the next tier's answer (estimated from
its configured prefill/decode rates). An answer without a confidence signal (an engine that
returns no log-probabilities) or an empty one escalates.

Signals (``RAGROUTE_CASCADE_SIGNAL``): ``logprob_mean`` / ``logprob_min``, the mean / lowest
token log-probability of the answer; ``grounded``, the share of the answer's content words
found in the sources it was given (the safety stage's grounding measure), which needs no
log-probabilities; ``selfcheck``, 1 / (1 + the problems the answer shows on its own: arithmetic
that does not compute, cut off at the token limit, unsure wording; pipelines/query/selfcheck.py),
which the reason names. On SQuAD with the cpu tiers the first three are weak (the 135M tier is
rarely right); grounding correlates best with the small answer's F1 (0.27; logprob_min 0.21,
logprob_mean 0.07) and has the highest APGR (0.54; 0.51 and 0.53: evals/routing_live.py). On
answers that compute (RouteLLM's GSM8K data) ``selfcheck`` finds a problem in 16.7% of
Mixtral's answers, 88.5% of them wrong; with a routed start (``RAGROUTE_CASCADE_START=routed``)
it needs 37% strong calls for 95% of strong-only accuracy, the router alone 57%
(evals/routing_offline.py, README).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.config import CascadeConfig, TierConfig
from pipelines.query import selfcheck
from pipelines.query.safety import grounding
from pipelines.records import Generation, ScoredChunk

MARGIN_MS = 100.0  # request overhead on top of the estimate (the service call, prompt building)


def measure(gen: Generation, signal: str, sources: Sequence[ScoredChunk] = ()) -> tuple[float | None, str]:
    """``signal`` of the answer ``gen``, written from ``sources`` (which ``grounded`` reads), and
    what it saw, for the reason (``selfcheck`` names the problems it found)."""
    if signal == "grounded":
        return round(grounding(gen.text, sources), 6), ""
    if signal == "selfcheck":
        found = selfcheck.check(gen.text, gen.finish_reason)
        seen = "; ".join(found.problems) or f"no problem found in {found.equations} equation(s)"
        return round(found.confidence, 6), f" ({seen})"
    return (gen.logprob_mean if signal == "logprob_mean" else gen.logprob_min), ""


def estimate_ms(tier: TierConfig | None, tokens_in: int, tokens_out: int) -> float:
    """How long ``tier`` needs for a prompt and answer of these sizes (its configured rates)."""
    if tier is None:
        return 0.0
    return (tokens_in / tier.prefill_tok_s + tokens_out / tier.decode_tok_s) * 1000 + MARGIN_MS


@dataclass(frozen=True)
class Verdict:
    escalate: bool
    outcome: str  # accepted | escalated | kept
    confidence: float | None
    reason: str


def judge(gen: Generation, cfg: CascadeConfig, next_tier: TierConfig | None, next_name: str,
          time_left_ms: float, sources: Sequence[ScoredChunk] = ()) -> Verdict:
    """Keep ``gen`` (written from ``sources``) or escalate to ``next_name``, given the time left
    for generation."""
    conf, seen = measure(gen, cfg.signal, sources)
    if not gen.text.strip():
        why = "empty answer"
    elif conf is None:
        why = f"no {cfg.signal} from the {gen.engine} engine"
    elif conf >= cfg.threshold:
        return Verdict(False, "accepted", conf,
                       f"{cfg.signal} {conf:.3f} >= threshold {cfg.threshold:.3f}{seen}")
    else:
        why = f"{cfg.signal} {conf:.3f} < threshold {cfg.threshold:.3f}{seen}"
    # the next tier writes an answer about as long as this one (its token limit caps it)
    tokens_out = min(gen.tokens_out or 1, next_tier.max_tokens if next_tier else gen.tokens_out or 1)
    need = estimate_ms(next_tier, gen.tokens_in, max(tokens_out, 8))
    if time_left_ms < need:
        return Verdict(False, "kept", conf, f"{why}, but {time_left_ms:.0f} ms left and {next_name} needs "
                                            f"~{need:.0f} ms: not escalated")
    return Verdict(True, "escalated", conf, f"{why}: escalated to {next_name}")
