"""Evidence: the sentences of the sources that best answer the question.

Used in two places:

* **context assembly** (``pipelines/query/prompt.py``): a prompt carries, per source, only its
  best sentences (plus the sentence after the best one, for context), within the tier's
  source-token budget, deduplicated across overlapping chunks, in reading order. Numbering
  stays that of ``sources``, so ``[2]`` in an answer is always the response's second source.
* **the extractive fallback** (``pipelines/query/pipeline.py``): when no tier can answer in
  time, the answer is the best sentence(s) with their citations instead of a chunk's head.
* **the cascade's ``coverage`` signal** (``coverage`` below): how much of the question an
  answer's first statement takes up, which tells a quote that answers from one that does not.

A sentence's score is its BM25 score against the question among all candidate sentences
(scaled to 0..1), plus a small prior for its source's rank, plus, when sentence vectors are
given, the cosine similarity with the query embedding. For example, of a source reading "Lists
are mutable. A tuple is an immutable sequence. Tuples use parentheses.", the best sentence for
"What is a tuple?" is the second (tests/unit/test_evidence.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from common.records import ScoredChunk
from common.text import tokenize
from index.lexical import Bm25Index, stem
from pipelines.query.cite import CITATION

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[*])")
_RULE = re.compile(r"^[\s*=~^\-#_+.]*$")  # rst heading underlines and other punctuation-only lines
RANK_PRIOR = 0.15  # weight of the source's rank: the reranker's order breaks near-ties
VECTOR_WEIGHT = 0.5  # weight of the cosine similarity when sentence vectors are given
MIN_CHARS = 12
MAX_SENTENCE_CHARS = 300
EXTRACT_RELATIVE = 0.75  # an extractive answer adds a sentence only if it scores this close to the best


@dataclass(frozen=True)
class Sentence:
    source: int  # index into the sources (0-based; cited as source + 1)
    position: int  # order within its source
    text: str


def split_sentences(text: str) -> list[str]:
    """Paragraphs, then sentences; whitespace collapsed; underlined headings (the source's title
    says the same) and fragments dropped.

    >>> split_sentences('The "if" statement\\n******************\\n\\nIt selects one suite. It runs it.')
    ['It selects one suite.', 'It runs it.']
    """
    out: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        raw = paragraph.splitlines()
        lines = [ln for i, ln in enumerate(raw)
                 if not _RULE.match(ln) and not (i + 1 < len(raw) and ln.strip() and _RULE.match(raw[i + 1]))]
        flat = " ".join(" ".join(lines).split())
        for sentence in _SENTENCE.split(flat):
            if len(sentence) >= MIN_CHARS or (sentence and sentence[-1] in ".!?"):
                out.extend(_windows(sentence))
    return [s for s in out if s.strip()]


def _windows(sentence: str) -> list[str]:
    """A run-on "sentence" (a grammar block, a list without full stops) in word windows of at
    most MAX_SENTENCE_CHARS, so that one of them can still fit a prompt's budget."""
    if len(sentence) <= MAX_SENTENCE_CHARS:
        return [sentence]
    out, current = [], ""
    for word in sentence.split(" "):
        if current and len(current) + 1 + len(word) > MAX_SENTENCE_CHARS:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return out + ([current] if current else [])


def sentences(sources: Sequence[ScoredChunk]) -> list[Sentence]:
    """Every sentence of the sources, once: overlapping chunks repeat text, and a sentence is
    kept where it first appears (the better-ranked source)."""
    seen: set[str] = set()
    out: list[Sentence] = []
    for i, source in enumerate(sources):
        for j, text in enumerate(split_sentences(source.chunk.text)):
            key = " ".join(text.lower().split())
            if key in seen:
                continue
            seen.add(key)
            out.append(Sentence(i, j, text))
    return out


def score(question: str, sents: Sequence[Sentence], n_sources: int, *,
          query_vector: np.ndarray | None = None, vectors: np.ndarray | None = None) -> np.ndarray:
    """One score per sentence (see the module docstring); higher is better."""
    if not sents:
        return np.zeros(0, dtype=np.float32)
    # b=0.5: a sentence is short anyway; full length normalisation would favour fragments
    lexical = Bm25Index([s.text for s in sents], b=0.5).scores(question)
    top = float(lexical.max()) if len(lexical) else 0.0
    scores = lexical / top if top > 0 else np.zeros(len(sents), dtype=np.float32)
    ranks = np.array([s.source for s in sents], dtype=np.float32)
    scores = scores + RANK_PRIOR * (1 - ranks / max(1, n_sources))
    if query_vector is not None and vectors is not None and len(vectors) == len(sents):
        scores = scores + VECTOR_WEIGHT * (vectors @ query_vector)
    return scores


def best(question: str, sources: Sequence[ScoredChunk], k: int, *, query_vector: np.ndarray | None = None,
         vectors: np.ndarray | None = None, relative: float = 0.0,
         keep: Callable[[str], bool] | None = None) -> list[Sentence]:
    """Up to ``k`` best sentences, best first; after the first, only those scoring at least
    ``relative`` x the best score. ``keep``: only sentences it accepts (the best one alone, if it
    accepts none)."""
    sents = sentences(sources)
    scores = score(question, sents, len(sources), query_vector=query_vector, vectors=vectors)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    if keep is not None:
        order = [i for i in order if keep(sents[i].text)] or order[:1]
    order = order[:k]
    return [sents[i] for n, i in enumerate(order) if n == 0 or scores[i] >= relative * scores[order[0]]]


def select(question: str, sources: Sequence[ScoredChunk], budget_tokens: int,
           count_tokens: Callable[[str], int]) -> dict[int, list[Sentence]]:
    """The sentences to put in a prompt, per source (in reading order), within ``budget_tokens``:
    best first; the best sentence of each source brings the one after it."""
    sents = sentences(sources)
    if not sents:
        return {}
    scores = score(question, sents, len(sources))
    by_pos = {(s.source, s.position): s for s in sents}
    chosen: dict[tuple[int, int], Sentence] = {}
    used = 0
    first_of: set[int] = set()

    def take(s: Sentence) -> bool:
        nonlocal used
        if (s.source, s.position) in chosen:
            return True
        cost = count_tokens(s.text) + 1
        if used + cost > budget_tokens:
            return False
        chosen[(s.source, s.position)] = s
        used += cost
        return True

    for i in np.argsort(-scores, kind="stable"):
        s = sents[i]
        if not take(s):
            continue
        if s.source not in first_of:
            first_of.add(s.source)
            nxt = by_pos.get((s.source, s.position + 1))
            if nxt is not None:
                take(nxt)
    out: dict[int, list[Sentence]] = {}
    for key in sorted(chosen):
        out.setdefault(key[0], []).append(chosen[key])
    return out


def render(picked: Sequence[Sentence]) -> str:
    """A source's picked sentences in reading order; `…` marks skipped text between them."""
    parts: list[str] = []
    prev = None
    for s in picked:
        if prev is not None and s.position != prev + 1:
            parts.append("…")
        parts.append(s.text)
        prev = s.position
    return " ".join(parts)


_ENDS_PROSE = re.compile(r"[.!?][\"')\]\u201d\u2019]*$")


def _prose(text: str) -> bool:
    """A sentence an extract may quote: it ends like one (code lines and headings do not), and is
    no grammar rule or interactive session."""
    t = text.strip()
    return bool(_ENDS_PROSE.search(t)) and "::=" not in t and not t.startswith(">>>")


def extract(question: str, sources: Sequence[ScoredChunk], *, max_chars: int = 400,
            query_vector: np.ndarray | None = None, vectors: np.ndarray | None = None) -> str:
    """The extractive answer: the best sentence, and up to two more that score nearly as well
    (within ``max_chars``), each cited, e.g. ``'A tuple is an immutable sequence. [1]'``.
    ``vectors``: one per sentence of ``sentences(sources)``, in that order."""
    if not sources:
        return "No answer could be generated and no relevant source was found."
    picked: list[Sentence] = []
    length = 0
    # "... proceeds as follows:" announces what the answer would not quote, and a code line, a
    # grammar rule ("pass_stmt ::= ...") or an interactive session (">>> ...") is not prose:
    # passed over for the best sentence that is, unless there is none
    complete = best(question, sources, 3, query_vector=query_vector, vectors=vectors, relative=EXTRACT_RELATIVE,
                    keep=_prose)
    for s in complete:
        if picked and length + len(s.text) > max_chars:
            break
        picked.append(s)
        length += len(s.text) + 5
    if not picked:  # a source with no sentence at all (e.g. only a heading rule)
        return f"{' '.join(sources[0].chunk.text.split())[:max_chars]} [1]"
    return " ".join(f"{s.text[:max_chars]} [{s.source + 1}]" for s in picked)


# Words a question is asked with rather than about, beyond BM25's stop words (common/text.py).
# Unlike BM25, coverage drops the Python keywords that are also English function words (with,
# for, in, is, as, from, and, or): on SQuAD's tune split, keeping them raised the share of
# questions the extractive -> large cascade needs on `large` for 95% of its F1 from 67% to 73%
# (docs/results.md, "Answer quality"). "What does the with statement do?" is then about "statement".
FUNCTION_WORDS = frozenset(
    "what which who whom whose when where why how many much did does do is was were are the a an of "
    "in to for on by with as at from and or that this name type kind".split()
)


@dataclass(frozen=True)
class Coverage:
    value: float  # share of the question's terms found; 1.0 for a question without any
    terms: tuple[str, ...]  # the question's terms (stemmed, function words dropped)
    missing: tuple[str, ...]  # those the answer's first statement lacks


def first_statement(answer: str) -> str:
    """The answer up to its first citation marker (its first sentence if it cites nothing), the
    marker removed: what an extractive answer quotes from its best sentence, what a model
    writes first."""
    marker = CITATION.search(answer)
    if marker is not None:
        return answer[: marker.start()].rstrip()
    sents = split_sentences(answer)
    return sents[0] if sents else answer


def coverage(question: str, answer: str) -> Coverage:
    """How much of the question the answer's first statement takes up: the share of the
    question's terms (stemmed, ``FUNCTION_WORDS`` dropped) it contains. The cascade's
    ``coverage`` signal (pipelines/query/modes/cascade.py): a quote that shares few of the
    question's words seldom answers it.

    >>> coverage("Which city hosted the 1956 Olympics?", "Melbourne hosted the 1956 Olympics. [1]")
    Coverage(value=0.75, terms=('citi', 'host', '1956', 'olymp'), missing=('citi',))
    >>> coverage("What is the purpose of the with statement?", "The del statement deletes names. [1]").missing
    ('purpos',)
    """
    asked = tuple(dict.fromkeys(stem(t) for t in tokenize(question) if t not in FUNCTION_WORDS))
    if not asked:
        return Coverage(1.0, (), ())
    have = {stem(t) for t in tokenize(first_statement(answer))}
    missing = tuple(t for t in asked if t not in have)
    return Coverage(round(1 - len(missing) / len(asked), 6), asked, missing)
