"""The cache's judge: how likely a cached answer is to answer a new question, from the evidence a
RAG cache has and a generic prompt cache does not (docs/cache.md, "The judge").

Evidence for one (cached question, new question) pair:

- ``judge``: the strongest local chat model's log-odds of "Yes" over "No" as its first token,
  asked whether the two questions ask for exactly the same information (:data:`SYSTEM`: a few
  worked examples from outside Python, so nothing of the evaluation set leaks into the prompt).
- ``verifier``: the hit verifier's P(same question) (verify.py); 1 for near-identical wording it
  did not need to score, -1 for a near-miss rule's veto.
- ``sources``: whether each question's first retrieved source is among the other's first four
  (0, 1 or 2): a rewording tends to retrieve the same documents, many near-misses do not.
- ``cosine``: the questions' embeddings' cosine.

They are combined by a logistic regression fitted on the in-domain set's tune half
(``python -m evals.cache_judge --fit``), shipped as ``judge.json`` with a manifest checked at
load: the sha256 of the weights, of the prompt they were fitted with, and the judge model's
name. The same file carries the offline prior of the error bound: per score band, how many of
the tune half's pairs fell there and how many of those were near-misses (wrong hits if served).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import ArtifactError
from pipelines.query.cache.policy import BANDS, PoolStats

FORMAT_VERSION = 1
JUDGE_FILE = Path(__file__).with_name("judge.json")
FEATURES = ("judge", "verifier", "sources", "cosine")
VETOED = -1.0  # the verifier feature of a pair a near-miss rule vetoed
SOURCES_COMPARED = 4  # a question's first source is looked for among the other's first four

SYSTEM = (
    "You decide whether two questions ask for exactly the same information, so that one correct "
    "answer answers both. Different wording, word order or politeness does not matter. A changed keyword, "
    "name, number or value, an added or removed 'not', a narrower or wider scope, or the opposite case "
    "makes them different questions.\n"
    "Examples:\n"
    "Question A: How do I undo my last git commit?\n"
    "Question B: What is the way to revert the most recent commit in git?\nSame: Yes\n"
    "Question A: How do I undo my last git commit?\nQuestion B: How do I undo my last git push?\nSame: No\n"
    "Question A: What does HTTP status 404 mean?\nQuestion B: Explain the meaning of a 404 response.\nSame: Yes\n"
    "Question A: What does HTTP status 404 mean?\nQuestion B: What does HTTP status 403 mean?\nSame: No\n"
    "Question A: Can a cron job run every minute?\n"
    "Question B: Is it possible to schedule cron to fire once a minute?\nSame: Yes\n"
    "Question A: Can a cron job run every minute?\nQuestion B: Can a cron job not run every minute?\nSame: No\n"
    "Question A: How do I list files in a directory with ls?\n"
    "Question B: How do I list only hidden files with ls?\nSame: No\n")
ASK = "Does one answer fit both questions exactly? Answer Yes or No."


def prompt_sha256() -> str:
    return hashlib.sha256(f"{SYSTEM}\x00{ASK}".encode()).hexdigest()


def system_turn() -> str:
    """The ChatML system turn, evaluated once per judge and kept in its KV cache."""
    return f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"


def pair_turn(cached: str, new: str) -> str:
    """The user turn for one pair and the assistant's header: the next token is the verdict."""
    return (f"<|im_start|>user\nQuestion A: {cached}\nQuestion B: {new}\n{ASK}<|im_end|>\n"
            "<|im_start|>assistant\n")


def sources_agree(cached: Sequence[str], new: Sequence[str], n: int = SOURCES_COMPARED) -> int:
    """How many of the two questions' first sources are among the other's first ``n`` (0-2)."""
    if not cached or not new:
        return 0
    return int(cached[0] in new[:n]) + int(new[0] in cached[:n])


@dataclass(frozen=True)
class Evidence:
    judge: float  # log-odds of "Yes"
    verifier: float  # P(same question), 1 unscored near-identical wording, VETOED
    sources: int
    cosine: float

    def vector(self) -> tuple[float, ...]:
        return (self.judge, self.verifier, float(self.sources), self.cosine)


@dataclass(frozen=True)
class CacheJudge:
    coef: tuple[float, ...]
    intercept: float
    judge_model: str
    prior_pairs: tuple[int, ...]  # per score band: the tune half's pairs scored there
    prior_wrong: tuple[int, ...]  # ... of which near-misses

    def probability(self, ev: Evidence) -> float:
        """P(the cached answer answers the new question)."""
        z = self.intercept + sum(c * x for c, x in zip(self.coef, ev.vector(), strict=True))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def prior(self) -> PoolStats:
        """The error bound's offline evidence: every tune pair a lookup, compared, wrong when a
        near-miss (a new tenant's pool starts from it; its own observations add to it)."""
        return PoolStats(self.prior_pairs, self.prior_wrong, lookups=self.prior_pairs)

    def to_model(self) -> dict:
        return {"features": list(FEATURES), "coef": list(self.coef), "intercept": self.intercept,
                "judge_model": self.judge_model, "prompt_sha256": prompt_sha256(),
                "prior": {"pairs": list(self.prior_pairs), "wrong": list(self.prior_wrong)}}

    @classmethod
    def load(cls, path: Path = JUDGE_FILE, judge_model: str | None = None) -> CacheJudge:
        """The shipped (or given) judge, checked: its format, the sha256 of its weights against
        its manifest, the prompt they were fitted with against :data:`SYSTEM` / :data:`ASK`, and,
        when ``judge_model`` is given, the model they were fitted with (other log-odds mean
        nothing to these weights)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read the cache judge {path}: {exc}") from None
        manifest, model = data.get("manifest", {}), data.get("model")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path} has format {manifest.get('format_version')}, expected {FORMAT_VERSION}; "
                                "refit with `python -m evals.cache_judge --fit`")
        if not isinstance(model, dict) or model_sha256(model) != manifest.get("model_sha256"):
            raise ArtifactError(f"{path}: the judge's weights do not match the sha256 in its manifest")
        if model.get("prompt_sha256") != prompt_sha256():
            raise ArtifactError(f"{path} was fitted with another judge prompt; refit with "
                                "`python -m evals.cache_judge --fit`")
        if tuple(model.get("features", ())) != FEATURES or len(model.get("coef", ())) != len(FEATURES):
            raise ArtifactError(f"{path}: features {model.get('features')}, expected {list(FEATURES)}")
        if judge_model is not None and model.get("judge_model") != judge_model:
            raise ArtifactError(f"{path} was fitted with the judge model {model.get('judge_model')!r}, "
                                f"not {judge_model!r}; refit with `python -m evals.cache_judge --fit`")
        prior = model.get("prior", {})
        pairs, wrong = tuple(prior.get("pairs", ())), tuple(prior.get("wrong", ()))
        if len(pairs) != BANDS or len(wrong) != BANDS or any(w > n or w < 0 for n, w in zip(pairs, wrong)):
            raise ArtifactError(f"{path}: the prior needs {BANDS} bands of (pairs, wrong <= pairs)")
        return cls(tuple(float(c) for c in model["coef"]), float(model["intercept"]), str(model["judge_model"]),
                   tuple(int(n) for n in pairs), tuple(int(w) for w in wrong))


def model_sha256(model: dict) -> str:
    return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()
