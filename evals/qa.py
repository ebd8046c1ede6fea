"""The in-domain QA set (evals/data/qa.jsonl): questions about the demo corpus with gold answers,
and its deterministic grading.

Each row: ``id``, ``topic`` (the help topic of ``pydoc_data.topics`` that answers it), the
``question``, a short gold ``answer``, and ``facts``: what a right answer must state, as groups
of alternatives (every group needs one alternative in the answer). Grading (:func:`grade`):

- **facts stated**: every group has an alternative in the answer (case-insensitive; a
  word-like alternative must start a word, so the stem "delet" matches "deleted" and "no"
  does not match "know");
- **source cited**: the answer cites a source of the gold topic (``pydoc:<topic>``), or one
  whose text states the facts itself (the help topics overlap: "compound" reprints the text of
  "if", "while", "try", "with"...).

A right answer states the facts and cites the topic. The halves (:func:`split`): ``tune`` and
``test`` by a hash of the id, so a router or threshold chosen on one is reported on the other.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "qa.jsonl"


@dataclass(frozen=True)
class Item:
    id: str
    topic: str
    question: str
    answer: str
    facts: tuple[tuple[str, ...], ...]

    @property
    def doc_id(self) -> str:
        return f"pydoc:{self.topic}"


def load(path: Path = DATA) -> list[Item]:
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            items.append(Item(row["id"], row["topic"], row["question"], row["answer"],
                              tuple(tuple(group) for group in row["facts"])))
    return items


def split(item: Item) -> str:
    """``tune`` or ``test``: half the set each, stable across runs and machines."""
    return "tune" if int(hashlib.sha256(item.id.encode()).hexdigest()[:8], 16) % 2 == 0 else "test"


def _states(alternative: str, text: str) -> bool:
    alt = alternative.strip().lower()
    if re.fullmatch(r"\w.*\w|\w", alt):
        return re.search(rf"(?<!\w){re.escape(alt)}", text) is not None
    return alt in text


def facts_stated(item: Item, answer: str) -> bool:
    """Every group of the item's facts has an alternative in ``answer``.

    >>> item = Item("q", "pass", "Is pass a comment?", "No.", (("no", "not"), ("statement",)))
    >>> facts_stated(item, "No, pass is a statement."), facts_stated(item, "It is known as a statement.")
    (True, False)
    """
    text = answer.lower()
    return all(any(_states(alt, text) for alt in group) for group in item.facts)


@dataclass(frozen=True)
class Grade:
    facts: bool
    cited: bool

    @property
    def right(self) -> bool:
        return self.facts and self.cited


def grade(item: Item, answer: str, cited_doc_ids: Sequence[str], cited_texts: Sequence[str] = ()) -> Grade:
    """``cited_doc_ids``/``cited_texts``: the documents and texts of the sources the answer cites."""
    return Grade(facts_stated(item, answer),
                 item.doc_id in cited_doc_ids or any(facts_stated(item, text) for text in cited_texts))
