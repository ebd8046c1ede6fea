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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ArtifactError, ConfigError
from pipelines.text import STOPWORDS

log = logging.getLogger(__name__)

WEIGHTS_FILE = Path(__file__).with_name("verifier.json")
FORMAT_VERSION = 4

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9+#'-]*|\.[A-Za-z]+|\d+(?:[.,]\d+)?")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
                     r"hundreds?|thousands?|millions?|billions?|lakhs?|crores?|dozens?)\b", re.I)
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_NEGATION = frozenset({"not", "no", "never", "without", "cannot", "nor", "none", "nothing", "neither"})
_ANTONYMS = (
    ("enable", "disable"), ("add", "remove"), ("increase", "decrease"), ("start", "stop"), ("before", "after"),
    ("install", "uninstall"), ("allow", "deny"), ("allow", "block"), ("encrypt", "decrypt"), ("import", "export"),
    ("upload", "download"), ("open", "close"), ("buy", "sell"), ("win", "lose"), ("gain", "lose"),
    ("best", "worst"), ("good", "bad"), ("advantages", "disadvantages"), ("pros", "cons"), ("max", "min"),
    ("maximum", "minimum"), ("first", "last"), ("more", "less"), ("increase", "reduce"), ("connect", "disconnect"),
    ("lock", "unlock"), ("male", "female"), ("men", "women"), ("love", "hate"), ("rich", "poor"),
    ("positive", "negative"), ("true", "false"), ("legal", "illegal"), ("possible", "impossible"),
    ("easy", "hard"), ("easy", "difficult"), ("cheap", "expensive"), ("old", "new"), ("young", "old"),
)
_WH = ("what", "why", "how", "when", "where", "who", "which", "whom", "whose")


@dataclass(frozen=True)
class _Question:
    text: str
    words: tuple[str, ...]
    lower: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> _Question:
        words = tuple(_WORD.findall(text))
        return cls(text, words, tuple(w.lower() for w in words))

    @property
    def content(self) -> list[str]:
        return [w for w in self.lower if w not in STOPWORDS and len(w) > 1]


def _numbers(q: _Question) -> set[str]:
    return {n.lower() for n in _NUMBER.findall(q.text)}


def _negated(q: _Question) -> bool:
    return any(w in _NEGATION or w.endswith("n't") for w in q.lower)


def _entities(q: _Question) -> set[str]:
    """Capitalized words after the first one: names of products, places, people, languages."""
    return {w.lower() for w in q.words[1:] if w[0].isupper() and w.lower() not in STOPWORDS}


def _discordance(a: list[str], b: list[str]) -> float:
    """Share of pairs of shared words that appear in opposite order in the two questions."""
    shared = [w for w in dict.fromkeys(a) if w in set(b)]
    if len(shared) < 2:
        return 0.0
    pos_b = {w: i for i, w in enumerate(b)}
    pairs = [(x, y) for i, x in enumerate(shared) for y in shared[i + 1:]]
    return sum(pos_b[x] > pos_b[y] for x, y in pairs) / len(pairs)


# Each rule: (cached, query, cut-off) -> a reason when the two questions need different answers.
def _rule_numbers(a: _Question, b: _Question, _: float) -> str | None:
    na, nb = _numbers(a), _numbers(b)
    return f"numbers differ ({sorted(na)} vs {sorted(nb)})" if na != nb else None


def _rule_negation(a: _Question, b: _Question, _: float) -> str | None:
    return "one question is negated, the other is not" if _negated(a) != _negated(b) else None


def _rule_antonyms(a: _Question, b: _Question, _: float) -> str | None:
    sa, sb = set(a.lower), set(b.lower)
    for x, y in _ANTONYMS:
        for p, q in ((x, y), (y, x)):
            if p in sa and q in sb and q not in sa and p not in sb:
                return f"antonyms differ ({p!r} vs {q!r})"
    return None


def _rule_entities(a: _Question, b: _Question, cut: float) -> str | None:
    ea, eb = _entities(a), _entities(b)
    if not ea | eb:
        return None
    mismatch = 1 - len(ea & eb) / len(ea | eb)
    return f"different names ({sorted(ea - eb)} vs {sorted(eb - ea)})" if mismatch > cut else None


def _rule_order(a: _Question, b: _Question, cut: float) -> str | None:
    d = _discordance(a.content, b.content)
    return f"the same words in another order (roles swapped, {d:.0%} of word pairs reversed)" if d > cut else None


def _rule_question_type(a: _Question, b: _Question, _: float) -> str | None:
    wa, wb = {w for w in a.lower if w in _WH}, {w for w in b.lower if w in _WH}
    return f"different question types ({sorted(wa)} vs {sorted(wb)})" if wa and wb and wa != wb else None


def _rule_non_ascii(a: _Question, b: _Question, _: float) -> str | None:
    xa, xb = set(_NON_ASCII.findall(a.text)), set(_NON_ASCII.findall(b.text))
    return f"different non-ASCII terms ({sorted(xa)} vs {sorted(xb)})" if xa != xb else None


RULES: dict[str, Callable[[_Question, _Question, float], str | None]] = {
    "numbers": _rule_numbers,
    "negation": _rule_negation,
    "antonyms": _rule_antonyms,
    "entities": _rule_entities,
    "order": _rule_order,
    "question_type": _rule_question_type,
    "non_ascii": _rule_non_ascii,
}


# -- the learned duplicate check -------------------------------------------------------------------
# Named pair features (each in [0, 1] but the cosine): what the reason string quotes.
FEATURES: dict[str, str] = {
    "cosine": "cosine",
    "word_overlap": "shared words",
    "extra_words": "words only in one",
    "length_gap": "length difference",
    "numbers": "different numbers",
    "negation": "negation",
    "antonyms": "antonyms",
    "entities": "different names",
    "order": "word order",
    "question_type": "question type",
    "non_ascii": "non-ASCII terms",
}
EMBEDDING_GROUP = "meaning (embeddings)"
PAIR_GROUP = "pair model"


def pair_features(cached: str, query: str, similarity: float) -> np.ndarray:
    """The named features of a pair, in ``FEATURES`` order."""
    return _pair_features(_Question.of(cached), _Question.of(query), similarity)


def _pair_features(a: _Question, b: _Question, similarity: float) -> np.ndarray:
    ca, cb = set(a.content), set(b.content)
    ea, eb = _entities(a), _entities(b)
    return np.array([
        similarity,
        len(ca & cb) / max(1, len(ca | cb)),
        min(1.0, len(ca ^ cb) / 10),
        abs(len(a.lower) - len(b.lower)) / max(1, len(a.lower), len(b.lower)),
        float(_numbers(a) != _numbers(b)),
        float(_negated(a) != _negated(b)),
        float(_rule_antonyms(a, b, 0.0) is not None),
        1 - len(ea & eb) / len(ea | eb) if ea | eb else 0.0,
        _discordance(a.content, b.content),
        float(_rule_question_type(a, b, 0.0) is not None),
        float(_rule_non_ascii(a, b, 0.0) is not None),
    ], dtype=np.float64)


def embedding_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Symmetric interactions of two unit embeddings: |u - v| and u * v."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return np.concatenate([np.abs(u - v), u * v], axis=-1)


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
        return self._reasons(_Question.of(cached), _Question.of(query))

    def _reasons(self, a: _Question, b: _Question) -> list[str]:
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
        a, b = _Question.of(cached), _Question.of(query)
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
            z, parts = self.scorer.logit(_pair_features(a, b, similarity),
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
