"""The committed evaluation sets keep their documented shape (evals/data/README.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pydoc_data.topics

DATA = Path(__file__).resolve().parents[2] / "evals" / "data"


def test_the_cache_paraphrase_set_has_its_documented_shape():
    rows = [json.loads(line) for line in (DATA / "cache_paraphrases.jsonl").read_text().splitlines() if line]
    assert len(rows) >= 150
    for row in rows:
        assert set(row) == {"topic", "question", "rewordings", "near_misses"}, row
        assert 2 <= len(row["rewordings"]) <= 4 and 1 <= len(row["near_misses"]) <= 2, row["question"]
        assert row["question"] not in row["near_misses"] and not set(row["rewordings"]) & set(row["near_misses"])
    asked = Counter(t.lower() for r in rows for t in (r["question"], *r["rewordings"]))
    assert [t for t, n in asked.items() if n > 1] == []  # every question and rewording once
    # written against Python 3.11's 79 help topics; other versions add or drop a few
    topics, current = {r["topic"] for r in rows}, set(pydoc_data.topics.topics)
    assert len(topics - current) <= 3 and len(current - topics) <= 3, (topics - current, current - topics)
