"""Answers to the in-domain paraphrase set through the real pipeline (demo index, shipped
CPU tiers, cache bypassed): what the error-bounded cache's answer comparison is measured on.

    python -m evals.cache_answers --questions 40     # ~3 answers per question, ~4 s each on 2 cores
    python -m evals.cache_answers --set RAGROUTE_SMALL_ENGINE=extractive \
        --out evals/out/cache_policy/answers-extractive.jsonl   # another tier setting, its own file

For the first ``--questions`` entries of evals/data/cache_paraphrases.jsonl it answers the
question, its first rewording and its first near-miss, and appends them to
evals/out/cache_policy/answers.jsonl (rows already there are kept, so runs resume).
``python -m evals.cache_policy`` then reports how often the service's comparison of two
answers (pipelines/query/cache/policy.py: ``answers_agree``) matches the labels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path

from evals.serving import ROOT

log = logging.getLogger("evals.cache_answers")

DATA = ROOT / "evals" / "data" / "cache_paraphrases.jsonl"
OUT = ROOT / "evals" / "out" / "cache_policy" / "answers.jsonl"


def build(overrides: dict[str, str] | None = None):
    """The pipeline over the real stages on the demo index, shipped defaults (cpu profile) plus
    ``overrides``, no cache."""
    from evals.answer_quality import cpu_pipeline
    from pipelines.config import EmbeddingConfig, RetrievalConfig
    from pipelines.query.embed import SentenceTransformerEmbedder
    from pipelines.indexing.build import ensure_default_index
    from pipelines.query.retrieve import open_index

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    cfg = RetrievalConfig.from_env({})
    ensure_default_index(cfg)  # the demo index, built on first use
    pipeline, generator, _ = cpu_pipeline(embedder, open_index(cfg), overrides)
    return pipeline, generator, embedder


async def collect(n: int, out: Path, overrides: dict[str, str] | None = None) -> None:
    from pipelines.api.schema import RagRequest

    items = [json.loads(line) for line in DATA.open() if line.strip()][:n]
    done = {(r["question"], r["role"]) for r in map(json.loads, out.open())} if out.exists() else set()
    pipeline, generator, _ = build(overrides)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("a") as f:
            for i, item in enumerate(items):
                asks = [("question", item["question"]), ("rewording", item["rewordings"][0]),
                        ("near_miss", item["near_misses"][0])]
                for role, text in asks:
                    if (item["question"], role) in done:
                        continue
                    t0 = time.perf_counter()
                    resp = await pipeline.run(RagRequest(query=text, cache="bypass"), f"{i}-{role}")
                    f.write(json.dumps({"question": item["question"], "role": role, "text": text,
                                        "answer": resp.answer, "degraded": resp.degraded,
                                        "sources": [s.doc_id for s in resp.sources],
                                        "wall_ms": round((time.perf_counter() - t0) * 1000, 1)}) + "\n")
                    f.flush()
                log.info("%d/%d questions answered", i + 1, len(items))
    finally:
        await generator.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.cache_answers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=40, help="how many questions of the set (default 40)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--set", action="append", default=[], metavar="RAGROUTE_KEY=VALUE",
                   help="a setting on top of the shipped defaults (repeatable); use another --out")
    args = p.parse_args(argv)
    from evals.answer_quality import settings

    overrides = settings(p, args.set)
    if overrides and args.out == OUT:
        p.error("--set answers another configuration: give them their own --out file")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(collect(args.questions, args.out, overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
