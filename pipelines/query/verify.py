"""Semantic-cache hit verifier: a second check after the vector threshold.

A cached question can be close in embedding space and still need another answer: "enable
2FA" vs "disable 2FA", "top 5" vs "top 10", "import from A to B" vs "from B to A", "in
Python" vs "in Java". The verifier runs named near-miss rules over the two questions; any
rule that fires rejects the candidate and says why. Which rules are active, their cut-offs
and the cosine threshold they pair with come from ``verifier.json``, chosen on labelled
question pairs (QQP tune split) by evals/cache_verifier.py: a rule is kept only if the
pairs it fires on are duplicates less often than average, i.e. if it raises precision.

    >>> v = HitVerifier.load()                                   # doctest: +SKIP
    >>> v.check("How do I enable 2FA?", "How do I disable 2FA?", 0.93).reason   # doctest: +SKIP
    "rejected: antonyms differ ('enable' vs 'disable')"
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ArtifactError
from pipelines.text import STOPWORDS

WEIGHTS_FILE = Path(__file__).with_name("verifier.json")
FORMAT_VERSION = 2

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


@dataclass(frozen=True)
class Verdict:
    accept: bool
    reason: str


class HitVerifier:
    def __init__(self, rules: dict[str, float], vector_threshold: float) -> None:
        unknown = set(rules) - set(RULES)
        if unknown:
            raise ArtifactError(f"unknown verifier rules {sorted(unknown)}; known: {', '.join(RULES)}")
        self.rules = rules  # active rule -> cut-off
        self.vector_threshold = vector_threshold  # the cosine threshold the rules were tuned with

    @classmethod
    def load(cls, path: Path = WEIGHTS_FILE) -> HitVerifier:
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
        return cls(data["model"]["rules"], data["model"]["vector_threshold"])

    def reasons(self, cached: str, query: str) -> list[str]:
        a, b = _Question.of(cached), _Question.of(query)
        return [r for name, cut in self.rules.items() if (r := RULES[name](a, b, cut))]

    def check(self, cached: str, query: str, similarity: float) -> Verdict:
        found = self.reasons(cached, query)
        if found:
            return Verdict(False, "rejected: " + "; ".join(found))
        return Verdict(True, f"accepted: cosine {similarity:.3f}, no near-miss rule fired "
                             f"(checked: {', '.join(self.rules)})")
