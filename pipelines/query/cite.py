"""Citations: an answer names the sources that support it.

The prompt asks for ``[1]``-style citations, but small models often answer from the sources
without citing any. After generation, each sentence of the answer is attributed to the source
whose content words it shares most, when it shares at least ``MIN_SUPPORT`` of them; the
numbers of supporting sources the answer does not cite yet are appended to it (``... reuse.
[1]``). Citations the model wrote are kept as they are; ``precision`` tells how many of an
answer's citations point at a source that supports a sentence citing it (the answer-quality
eval reports it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from common.records import ScoredChunk
from common.text import tokenize

CITATION = re.compile(r"\[(\d{1,3})\]")
_END = re.compile(r"(?:(?<=[.!?])|(?<=\]))\s+(?=[A-Z\"'(`])")  # trailing citations stay with their sentence
MIN_SUPPORT = 0.5  # share of a sentence's content words a source must contain to support it


def sentences(answer: str) -> list[str]:
    """The answer's sentences, each with the citations that follow it.

    >>> sentences("It wraps a block. [1] It calls __exit__ [2]. Done")
    ['It wraps a block. [1]', 'It calls __exit__ [2].', 'Done']
    """
    return [s for s in _END.split(" ".join(answer.split())) if s]


def content_words(text: str) -> set[str]:
    """The text's content words, citation markers aside (also the safety check's grounding)."""
    return set(tokenize(CITATION.sub(" ", text)))


def _source_words(sources: Sequence[ScoredChunk]) -> list[set[str]]:
    return [content_words(f"{s.chunk.title} {s.chunk.text}") for s in sources]


def _support(sentence: set[str], source: set[str]) -> float:
    return len(sentence & source) / len(sentence) if sentence else 0.0


def attribute(answer: str, sources: Sequence[ScoredChunk]) -> list[int]:
    """For each sentence of ``answer``, in order, the number (1-based) of the source that supports
    it best, if one supports it enough; each number once."""
    out: list[int] = []
    source_words = _source_words(sources)
    for sentence in sentences(answer):
        words = content_words(sentence)
        if not words or not sources:
            continue
        scores = [_support(words, s) for s in source_words]
        best = max(range(len(sources)), key=scores.__getitem__)
        if scores[best] >= MIN_SUPPORT and best + 1 not in out:
            out.append(best + 1)
    return out


def missing(answer: str, sources: Sequence[ScoredChunk]) -> str:
    """What to append to ``answer`` so that it cites the sources supporting it: ``""`` when it
    already cites them (or nothing supports it), else e.g. ``" [1][3]"``."""
    cited = {int(n) for n in CITATION.findall(answer)}
    add = [n for n in attribute(answer, sources) if n not in cited]
    return (" " + "".join(f"[{n}]" for n in add)) if add else ""


def precision(answer: str, sources: Sequence[ScoredChunk]) -> float | None:
    """Share of the answer's citations whose source supports the sentence citing it (None when
    it cites nothing)."""
    pairs = [(int(n), content_words(sentence)) for sentence in sentences(answer)
             for n in CITATION.findall(sentence)]
    if not pairs:
        return None
    source_words = _source_words(sources)
    good = sum(1 for n, words in pairs if 1 <= n <= len(sources) and _support(words, source_words[n - 1]) >= MIN_SUPPORT)
    return good / len(pairs)
