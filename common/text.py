"""Text helpers shared by the cache (query normalization) and BM25 (tokenization)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WS = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s?!.]+$")
_TOKEN = re.compile(r"[a-z0-9_]+")
# Deliberately small, and free of Python keywords (with, for, in, is, as, ...): in a
# documentation corpus they are often the most informative token of a question.
STOPWORDS = frozenset(
    "a an and are at be by do does how i it of on or that the this to was what when where "
    "which who why will you your can".split()
)


def normalize_query(text: str) -> str:
    """Canonical form used by the exact-match cache.

    >>> normalize_query("  What does   the WITH statement do?? ")
    'what does the with statement do'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return _TRAILING.sub("", _WS.sub(" ", text).strip())


def query_hash(text: str) -> str:
    return hashlib.sha256(normalize_query(text).encode()).hexdigest()


def tokenize(text: str, *, keep_stopwords: bool = False) -> list[str]:
    """Lower-cased word tokens for BM25, stop words dropped unless asked to keep them.

    >>> tokenize("What does the with statement do?")
    ['with', 'statement']
    """
    tokens = _TOKEN.findall(text.lower())
    return tokens if keep_stopwords else [t for t in tokens if t not in STOPWORDS]


def content_id(*parts: str) -> str:
    """Deterministic id: re-indexing the same content yields the same ids."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]
