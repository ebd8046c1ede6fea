"""Lead-ins: an answer's opening words that only point at the sources ("According to the
sources, ...", "Based on [1], ...") are dropped, and any source numbers in them are kept as
citations.

The prompt asks the models to state the answer directly; the 0.5B model opens about half of its
answers with such a phrase anyway (SQuAD, `make eval-answers`), which costs the reader words and
the answer's token F1 a third of its precision. Only phrases whose referent is the sources are
dropped: "the sources", "the text", "[2]", "source [1]", or a source's title ("According to
Victoria (Australia), ..."); "According to legend, ..." says something and is kept.

Streaming: ``LeadIn.feed`` holds back the first characters until it knows whether they are a
lead-in (at most ``HOLD_CHARS``), so a streamed answer and a whole one come out the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pipelines.query.cite import CITATION

HOLD_CHARS = 160  # a lead-in longer than this is not one: the text so far is released as it is
_OPENERS = ("according to ", "based on ", "as stated in ", "as mentioned in ", "as described in ",
            "as per ", "in ")
_GENERIC = re.compile(
    r"^(?:the |these |this |all |both )?(?:provided |given |above |numbered |following )?"
    r"(?:sources?|texts?|context|documents?|passages?|information(?: provided| given)?|excerpts?)"
    r"(?:\s*(?:\[\d{1,3}\]\s*(?:,|and)?\s*)*)?$", re.IGNORECASE)
_ONLY_CITATIONS = re.compile(r"^(?:\[\d{1,3}\]\s*(?:,|and)?\s*)+$")
_ANSWER_IS = re.compile(r"^the answer(?: to (?:the|this|your) question)? is:?\s+(?=\S)", re.IGNORECASE)


def _referent_is_sources(referent: str, titles: Iterable[str]) -> bool:
    r = " ".join(referent.split()).strip()
    if not r:
        return False
    if _ONLY_CITATIONS.match(r) or _GENERIC.match(r):
        return True
    bare = CITATION.sub("", r).strip().rstrip(",").strip()
    return any(bare.lower() == t.strip().lower() for t in titles if t.strip())


def match(text: str, titles: Iterable[str] = ()) -> tuple[int, list[int]] | None:
    """``(length, citations)`` of the lead-in ``text`` starts with, or None: no lead-in, or not
    decidable yet (the caller passes more text, or all of it).

    >>> match("According to the sources, Melbourne is the capital. [1]")
    (26, [])
    >>> match("According to [2], it melts.")
    (18, [2])
    >>> match("According to legend, it was founded in 1835.") is None
    True
    """
    lowered = text.lower()
    if m := _ANSWER_IS.match(text):
        return m.end(), []
    for opener in _OPENERS:
        if not lowered.startswith(opener):
            continue
        comma = re.search(r"[,:]\s+(?=\S)", text[len(opener):])
        if comma is None:
            return None
        referent = text[len(opener): len(opener) + comma.start()]
        if opener == "in " and not (_ONLY_CITATIONS.match(referent.strip()) or _GENERIC.match(referent.strip())):
            return None  # "In 1788, ..." is content; only "In the sources, ..." / "In [1], ..." point
        if _referent_is_sources(referent, titles):
            return len(opener) + comma.end(), [int(n) for n in CITATION.findall(referent)]
        return None
    return None


def undecided(text: str) -> bool:
    """Whether more text could still make ``text`` the start of a lead-in."""
    lowered = " ".join(text.lower().split())
    if len(text) >= HOLD_CHARS:
        return False
    candidates = (*_OPENERS, "the answer is", "the answer to the question is", "the answer to this question is",
                  "the answer to your question is")
    for opener in candidates:
        if opener.startswith(lowered) or (lowered.startswith(opener) and not re.search(r"[,:.]\s", lowered)):
            return True
    return False


def strip(text: str, titles: Iterable[str] = ()) -> str:
    """``text`` without its lead-in, first letter capitalised, the lead-in's citations appended
    if the rest does not cite them (a whole answer through :class:`LeadIn`)."""
    f = LeadIn(titles)
    return f.feed(text) + f.close()


class LeadIn:
    """The streaming form: ``feed`` each delta, send what it returns; ``close`` returns what is
    left (the held text, or the lead-in's citations the answer did not repeat)."""

    def __init__(self, titles: Iterable[str] = ()) -> None:
        self.titles = list(titles)
        self.held = ""
        self.decided = False
        self.cited: list[int] = []
        self.sent = ""

    def feed(self, delta: str) -> str:
        if self.decided:
            self.sent += delta
            return delta
        self.held += delta
        text = self.held.lstrip()
        found = match(text, self.titles)
        if found is None and undecided(text):
            return ""
        self.decided = True
        if found is not None and text[found[0]:].strip():
            length, self.cited = found
            rest = text[length:]
            out = rest[0].upper() + rest[1:]
        else:
            out = self.held
        self.held = ""
        self.sent += out
        return out

    def close(self) -> str:
        if not self.decided:
            self.decided = True
            out, self.held = self.held, ""
            self.sent += out
            return out
        have = {int(n) for n in CITATION.findall(self.sent)}
        extra = "".join(f" [{n}]" for n in dict.fromkeys(self.cited) if n not in have)
        self.sent += extra
        return extra
