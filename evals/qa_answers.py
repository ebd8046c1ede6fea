"""Right answers on the in-domain QA set (evals/data/qa.jsonl), per tier and mode, through the real
query path on the demo corpus, with the shipped defaults.

    python -m evals.qa_answers                              # small, large, auto on both halves
    python -m evals.qa_answers --modes large --split test   # one mode, the held-out half
    python -m evals.qa_answers --set RAGROUTE_SMALL_ENGINE=extractive --modes small

Every question goes through ``QueryPipeline`` in process over the real stages (MiniLM, FAISS,
fusion + the rerank stage, the router, the packaged llama.cpp models), with the ``cpu`` budget
profile: what `make serve` runs, minus HTTP and the cache. Graded deterministically
(evals/qa.py): **right** = the answer states the item's facts and cites a source of its help
topic; also **facts stated** and **topic cited** alone, **topic retrieved** (among the
answer's sources), degraded share, latency p50/p95 and the share answered per tier. Answers are
cached in evals/out/qa_answers/answers.jsonl by question, mode and what the mode's answers depend
on, so a re-run only asks what is missing. Writes evals/out/qa_answers[-<setting>].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import time
from collections import Counter
from datetime import datetime, timezone

from evals import qa
from evals.answer_quality import OUT, cache_key, cpu_pipeline, pct, settings

log = logging.getLogger("evals.qa_answers")

WORK = OUT / "qa_answers"
MODES = ("small", "large", "auto")


def demo_pipeline(overrides: dict[str, str]):
    from index.store import IndexStore
    from pipelines.config import EmbeddingConfig, RetrievalConfig
    from pipelines.indexing.build import ensure_demo_index
    from pipelines.query.embed import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    index = ensure_demo_index(RetrievalConfig.from_env().demo_index_dir, lambda: embedder)
    store = IndexStore.load(index, embedding_model=embedder.model_id)
    return (*cpu_pipeline(embedder, store, overrides), {c.id: c.text for c in store.chunks})


async def answer_all(items: list[qa.Item], modes: list[str], overrides: dict[str, str]) -> list[dict]:
    from pipelines.query.cite import CITATION
    from pipelines.api.schema import RagRequest

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "answers.jsonl"
    rows = [json.loads(line) for line in path.open()] if path.exists() else []
    pipeline, generator, gen_cfg, texts = demo_pipeline(overrides)
    keys = {mode: cache_key(mode, gen_cfg, overrides) for mode in modes}
    wanted = {i.id for i in items}
    # rows from before the cascade's signals were recorded are asked again
    out = [r for r in rows if r["config"] == keys.get(r["mode"]) and r["id"] in wanted and "signals" in r]
    have = {(r["id"], r["mode"]) for r in out}
    try:
        with path.open("a") as f:
            for mode in modes:
                for n, item in enumerate(items):
                    if (item.id, mode) in have:
                        continue
                    t0 = time.perf_counter()
                    resp = await pipeline.run(RagRequest(query=item.question, tier=mode, cache="bypass"), f"{mode}-{n}")
                    wall = (time.perf_counter() - t0) * 1000
                    cited = [resp.sources[int(k) - 1] for k in CITATION.findall(resp.answer)
                             if 0 < int(k) <= len(resp.sources)]
                    grade = qa.grade(item, resp.answer, [s.doc_id for s in cited],
                                     [texts.get(s.id, "") for s in cited])
                    row = {"id": item.id, "mode": mode, "config": keys[mode], "split": qa.split(item),
                           "answer": resp.answer, "cited_ids": [s.id for s in cited], "tier": resp.route.tier, "model": resp.route.model,
                           "score": resp.route.score, "degraded": resp.degraded, "warnings": resp.warnings,
                           "right": grade.right, "facts": grade.facts, "cited": grade.cited,
                           "retrieved": item.doc_id in [s.doc_id for s in resp.sources],
                           "tokens_in": resp.usage.tokens_in, "tokens_out": resp.usage.tokens_out,
                           "total_ms": resp.timings_ms["total"], "wall_ms": round(wall, 1),
                           # what a router or a cascade could decide on, for offline calibration
                           "signals": {"logprob_mean": resp.usage.logprob_mean, "logprob_min": resp.usage.logprob_min,
                                       "grounding": resp.safety.grounding,
                                       "source_scores": [s.score for s in resp.sources]}}
                    out.append(row)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    if (n + 1) % 20 == 0:
                        log.info("%s: %d/%d", mode, n + 1, len(items))
    finally:
        await generator.close()
    return out


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    share = lambda key: round(sum(bool(r[key]) for r in rows) / n, 3) if n else None  # noqa: E731
    latency = [r["total_ms"] / 1000 for r in rows]
    return {"questions": n, "right": share("right"), "facts_stated": share("facts"), "topic_cited": share("cited"),
            "topic_retrieved": share("retrieved"), "degraded": share("degraded"),
            "latency_s": {"p50": pct(latency, 0.5), "p95": pct(latency, 0.95)},
            "tier_share": {t: round(c / n, 3) for t, c in Counter(r["tier"] for r in rows).items()} if n else {}}


def route_curve(rows: list[dict], keep: float = 0.97) -> dict | None:
    """Routing between ``small`` and ``large`` by the router's score (``auto``'s rows carry it,
    whatever threshold sent them): per threshold, the share sent to ``large`` and the right share
    (small's answer below it, large's at or above it). The threshold chosen on the tune half: the
    one sending the fewest questions to ``large`` while keeping ``keep`` of large's right share;
    reported on the test half."""
    by = {(r["id"], r["mode"]): r for r in rows}
    for r in rows:  # an auto answer that went to large is large's answer (the same request)
        if r["mode"] == "auto" and r["tier"] == "large":
            by.setdefault((r["id"], "large"), r)
    ids = sorted({r["id"] for r in rows if r["mode"] == "auto" and r["score"] is not None
                  and (r["id"], "small") in by and (r["id"], "large") in by})
    if not ids:
        return None
    split = {i: by[(i, "auto")]["split"] for i in ids}
    if set(split.values()) != {"tune", "test"}:
        return None  # calibrated on one half, reported on the other: both are needed

    def at(threshold: float, part: str) -> tuple[float, float]:
        chosen = [i for i in ids if split[i] == part]
        sent = [i for i in chosen if by[(i, "auto")]["score"] >= threshold]
        right = sum(by[(i, "large" if i in sent else "small")]["right"] for i in chosen)
        return len(sent) / len(chosen), right / len(chosen)

    thresholds = sorted({0.0, 1.01, *(by[(i, "auto")]["score"] for i in ids)})
    large_right = at(0.0, "tune")[1]
    fits = [t for t in thresholds if at(t, "tune")[1] >= keep * large_right]
    chosen = max(fits)  # the highest threshold: the fewest sent to large
    return {"keep": keep, "threshold": chosen, "tune": dict(zip(("large_share", "right"), at(chosen, "tune"))),
            "test": dict(zip(("large_share", "right"), at(chosen, "test"))),
            "curve_test": [dict(zip(("threshold", "large_share", "right"), (t, *at(t, "test")))) for t in thresholds]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--split", choices=("tune", "test", "all"), default="all")
    parser.add_argument("--limit", type=int, default=0, help="the first N questions of the split (0: all)")
    parser.add_argument("--set", action="append", default=[], metavar="RAGROUTE_KEY=VALUE",
                        help="a setting on top of the shipped defaults (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = settings(parser, args.set)
    items = [i for i in qa.load() if args.split == "all" or qa.split(i) == args.split]
    items = items[: args.limit] if args.limit else items
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = asyncio.run(answer_all(items, modes, overrides))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
        "command": "python -m evals.qa_answers " + " ".join(argv if argv is not None else []),
        "settings": overrides,
        "modes": {mode: {split: summarize([r for r in rows if r["mode"] == mode and (split == "all" or r["split"] == split)])
                         for split in ("tune", "test", "all")} for mode in modes},
    }
    result["routing"] = route_curve(rows)
    suffix = "".join(f"-{k.removeprefix('RAGROUTE_').lower()}-{v}" for k, v in sorted(overrides.items()))
    path = OUT / f"qa_answers{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| mode | right (tune / test) | facts stated | topic cited | topic retrieved | degraded | p50 / p95 s | tiers |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, by in result["modes"].items():
        a, t, s = by["all"], by["tune"], by["test"]
        lines.append(f"| {mode} | {a['right']} ({t['right']} / {s['right']}) | {a['facts_stated']} | {a['topic_cited']} "
                     f"| {a['topic_retrieved']} | {a['degraded']} | {a['latency_s']['p50']} / {a['latency_s']['p95']} "
                     f"| {a['tier_share']} |")
    if result["routing"]:
        r = result["routing"]
        lines.append(f"routing by the router's score: threshold {r['threshold']:.3f} (tune), on test: "
                     f"{r['test']['large_share']:.0%} to large, {r['test']['right']:.0%} right")
    log.info("wrote %s\n%s", path, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
