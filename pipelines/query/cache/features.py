"""What the hit verifier reads from a pair of questions (pipelines/query/cache/verify.py): the
near-miss rules (named vetoes: antonyms, different numbers, negation, ...) and the named pair
features its learned check weighs, both over the same parsed :class:`Question`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.text import STOPWORDS

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
class Question:
    text: str
    words: tuple[str, ...]
    lower: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> Question:
        words = tuple(_WORD.findall(text))
        return cls(text, words, tuple(w.lower() for w in words))

    @property
    def content(self) -> list[str]:
        return [w for w in self.lower if w not in STOPWORDS and len(w) > 1]


def _numbers(q: Question) -> set[str]:
    return {n.lower() for n in _NUMBER.findall(q.text)}


def _negated(q: Question) -> bool:
    return any(w in _NEGATION or w.endswith("n't") for w in q.lower)


def _entities(q: Question) -> set[str]:
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
def _rule_numbers(a: Question, b: Question, _: float) -> str | None:
    na, nb = _numbers(a), _numbers(b)
    return f"numbers differ ({sorted(na)} vs {sorted(nb)})" if na != nb else None


def _rule_negation(a: Question, b: Question, _: float) -> str | None:
    return "one question is negated, the other is not" if _negated(a) != _negated(b) else None


def _rule_antonyms(a: Question, b: Question, _: float) -> str | None:
    sa, sb = set(a.lower), set(b.lower)
    for x, y in _ANTONYMS:
        for p, q in ((x, y), (y, x)):
            if p in sa and q in sb and q not in sa and p not in sb:
                return f"antonyms differ ({p!r} vs {q!r})"
    return None


def _rule_entities(a: Question, b: Question, cut: float) -> str | None:
    ea, eb = _entities(a), _entities(b)
    if not ea | eb:
        return None
    mismatch = 1 - len(ea & eb) / len(ea | eb)
    return f"different names ({sorted(ea - eb)} vs {sorted(eb - ea)})" if mismatch > cut else None


def _rule_order(a: Question, b: Question, cut: float) -> str | None:
    d = _discordance(a.content, b.content)
    return f"the same words in another order (roles swapped, {d:.0%} of word pairs reversed)" if d > cut else None


def _rule_question_type(a: Question, b: Question, _: float) -> str | None:
    wa, wb = {w for w in a.lower if w in _WH}, {w for w in b.lower if w in _WH}
    return f"different question types ({sorted(wa)} vs {sorted(wb)})" if wa and wb and wa != wb else None


def _rule_non_ascii(a: Question, b: Question, _: float) -> str | None:
    xa, xb = set(_NON_ASCII.findall(a.text)), set(_NON_ASCII.findall(b.text))
    return f"different non-ASCII terms ({sorted(xa)} vs {sorted(xb)})" if xa != xb else None


RULES: dict[str, Callable[[Question, Question, float], str | None]] = {
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
    return question_features(Question.of(cached), Question.of(query), similarity)


def question_features(a: Question, b: Question, similarity: float) -> np.ndarray:
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
