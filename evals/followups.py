"""Follow-ups in a conversation, asked as standalone questions (issue 38): the rewriting rules
(pipelines/query/followup.py) against the gold standalone questions of the QA set's
conversations (evals/data/conversations.jsonl), with what the service asked before them (the
previous question prefixed: ``Regarding "<previous>": <follow-up>``) side by side in the same run.

    python -m evals.followups            # ~20 s on 2 cores (the demo index is built first if absent)

Per follow-up turn (the first turn of each conversation is the context):
- **rewritten right**: the question asked equals the gold standalone question or one of its
  accepted alternates (lower case, punctuation and whitespace ignored);
- **source found**: the gold answer's help topic is among the 4 sources the shipped retrieval
  (score fusion) and rerank stage (near-duplicate filter) give the question asked, and **first
  source**: it is the first of them; for the gold standalone question itself, the rules'
  question, the previous behaviour and the follow-up's own words.
Rewriting cost: microseconds per question (the rules read words; no model is asked).
Reported per split: ``dev`` (62 conversations the rules were written and corrected against) and
``test`` (12 written after the rules were frozen and scored once, never tuned on).

Writes evals/out/followups.json and logs a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

from evals.serving import ROOT
from pipelines import config

log = logging.getLogger("evals.followups")

DATA = ROOT / "evals" / "data" / "conversations.jsonl"
SOURCES = 4


def normalized(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9_]+", text.lower()))


def turns(path: Path) -> list[dict]:
    """Every follow-up turn: the conversation's user turns up to it, and its gold."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        conv = json.loads(line)
        for i, turn in enumerate(conv["turns"][1:], start=1):
            out.append({"id": f"{conv['id']}.{i}", "split": conv.get("split", "test"), "users": [t["user"] for t in conv["turns"][: i + 1]],
                        "previous": conv["turns"][i - 1]["standalone"], **turn})
    return out


def before(previous: str, question: str) -> str:
    """What the service asked before the rules: the previous question prefixed to a follow-up."""
    from pipelines.api.openai_compat import is_follow_up

    return f'Regarding "{previous}": {question}' if is_follow_up(question) else question


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "evals" / "out" / "followups.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from index.store import IndexStore
    from pipelines.config import EmbeddingConfig, RerankConfig, RetrievalConfig, SearchConfig
    from pipelines.indexing.build import ensure_demo_index
    from pipelines.api.openai_request import Message
    from pipelines.api.openai_compat import standalone_question
    from pipelines.query.embed import SentenceTransformerEmbedder
    from pipelines.query.rerank import make_reranker
    from pipelines.query.retrieve import search

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    retrieval = RetrievalConfig.from_env()
    index = ensure_demo_index(retrieval.demo_index_dir, lambda: embedder)
    store = IndexStore.load(index, embedding_model=embedder.model_id)
    reranker = make_reranker(RerankConfig())
    candidates = config.RagConfig.from_env().candidates  # retrieval candidates, as the service asks

    def sources(question: str) -> list[str]:
        found = search(store, SearchConfig(), embedder.encode([question])[0], question, candidates)
        return [s.chunk.doc_id for s in reranker.rerank(question, found, SOURCES)]

    rows = []
    spent = []
    for t in turns(args.data):
        t0 = time.perf_counter()
        asked, rewritten = standalone_question([Message(role="user", content=u) for u in t["users"]])
        spent.append(time.perf_counter() - t0)
        gold = [t["standalone"], *t.get("alternates", [])]
        topic = f"pydoc:{t['topic']}"
        row = {"id": t["id"], "split": t["split"], "follow_up": t["users"][-1], "gold": t["standalone"], "asked": asked,
               "rewritten": rewritten, "right": normalized(asked) in {normalized(g) for g in gold}}
        for name, question in (("gold", t["standalone"]), ("rules", asked),
                               ("before", before(t["previous"], t["users"][-1])), ("words", t["users"][-1])):
            found = sources(question)
            row[name] = {"question": question, "sources": found, "found": topic in found,
                         "first": bool(found) and found[0] == topic}
        rows.append(row)
        if not row["right"]:
            log.info("%s: %r -> asked %r (gold %r)", t["id"], t["users"][-1], asked, t["standalone"])

    def summarize(part: list[dict]) -> dict:
        n = len(part)
        share = lambda key, sub=None: sum(bool(r[key] if sub is None else r[key][sub]) for r in part) / n  # noqa: E731
        return {"follow_ups": n, "conversations": len({r["id"].split(".")[0] for r in part}),
                "rewritten_right": share("right"),
                **{f"{name}_{what}": share(name, what) for name in ("gold", "rules", "before", "words")
                   for what in ("found", "first")}}

    splits = {name: summarize([r for r in rows if r["split"] == name]) for name in ("dev", "test")}
    summary = {**summarize(rows), "rewrite_us_p50": sorted(spent)[len(spent) // 2] * 1e6, "splits": splits}
    result = {"data": str(args.data), "summary": summary, "turns": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"{summary['follow_ups']} follow-ups in {summary['conversations']} conversations; rewriting "
             f"{summary['rewrite_us_p50']:.0f} us p50", "",
             "| question asked | rewritten right (dev / test) | gold topic in the 4 sources (dev / test) "
             "| gold topic first (dev / test) |", "|---|---|---|---|"]
    dev, test = splits["dev"], splits["test"]
    for name, label in (("gold", "the gold standalone question"), ("rules", "the rules' rewrite (now)"),
                        ("before", "the previous question prefixed (before)"), ("words", "the follow-up's own words")):
        right = f"{dev['rewritten_right']:.0%} / {test['rewritten_right']:.0%}" if name == "rules" else "-"
        lines.append(f"| {label} | {right} | {dev[name + '_found']:.0%} / {test[name + '_found']:.0%} "
                     f"| {dev[name + '_first']:.0%} / {test[name + '_first']:.0%} |")
    log.info("wrote %s\n%s", args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
