"""A small labelled set for router tests: multi-step/analytical questions the large tier is
needed for (small wrong, large right), and short factoids both tiers answer."""

from __future__ import annotations

import json
from pathlib import Path

TOPICS = ["the borrow checker", "espresso extraction", "ocean tides", "the Zorvik lighthouse", "garbage collection",
          "TCP congestion control", "photosynthesis", "compound interest", "vector databases", "the French revolution",
          "database indexes", "neural network training", "supply and demand", "plate tectonics", "public key crypto"]
HARD = ["Explain step by step why {t} behaves the way it does, and compare it with two alternatives.",
        "Analyze the trade-offs of {t}: what breaks first under load, and how would you design around it?"]
EASY = ["What is {t}?", "Who first described {t}?"]


def rows() -> list[dict]:
    out = []
    for t in TOPICS:
        out += [{"query": h.format(t=t), "small_score": 0, "large_score": 1} for h in HARD]
        out += [{"query": e.format(t=t), "small_score": 1, "large_score": 1} for e in EASY]
    return out


def write(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    return path


def trained_router(tmp: Path) -> Path:
    """A learned router artifact trained on these rows with `ragroute router train` (real embedder)."""
    from pipelines.cli import main

    data = write(tmp / "labelled.jsonl")
    assert main(["router", "train", "--data", str(data), "--out", str(tmp / "router"), "--quiet",
                 "--quality", "0.95"]) == 0
    return tmp / "router"
