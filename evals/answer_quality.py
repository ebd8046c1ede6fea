"""Answer quality on SQuAD through the real query path, with the shipped defaults.

    python -m evals.answer_quality                      # 60 questions, every mode; JSON + PNG in evals/out/
    python -m evals.answer_quality --limit 40 --modes small,large
    python -m evals.answer_quality --data DIR           # any BEIR-layout QA folder whose queries carry "answers"
    python -m evals.answer_quality --set RAGROUTE_SMALL_ENGINE=extractive   # a setting on top of the defaults
                                                        # (written to answer_quality-small_engine-extractive.json)

Every question goes through ``QueryPipeline`` in process over the real stages (MiniLM, FAISS,
the hybrid reranker, the heuristic router, both packaged llama.cpp models), with the ``cpu``
budget profile and the default tier settings: exactly what `make serve` runs, minus HTTP and
the cache (off, so every answer is generated). Modes: each tier, ``auto`` and ``cascade``.

Per mode and split: token F1 and exact match (SQuAD's normalisation, citation markers
removed), "gold answer contained in the answer", citation precision (the share of an answer's
citations whose source contains a gold answer), degraded share, latency p50/p95, time to first
token p50, prompt and answer tokens, and the share answered by ``large``.

Side by side, for each fixed-tier answer of the report split, the same prompt and the same
number of answer tokens straight through llama.cpp (``create_chat_completion`` in this process,
right after the previous question's, as the pipeline ran them): ``raw_ms``, and the pipeline's
total latency over it (``overhead_ratio``: embed, retrieve, rerank, route, safety and the
prompt building on top of the model's own time).

Questions are split by position: even ones are the *tune* split, odd ones the *report* split.
The tune split sets the answer-length limit it reports (``tuned_max_tokens``: the 95th
percentile of the answer tokens of the tune split's correct answers, per tier); the report
split's numbers are the ones to quote. With both the cheapest and the last tier answered, it also
calibrates a cascade between them on the ``coverage`` signal of the cheapest tier's answers
(``cascade_calibration``: the threshold that keeps 95% of the last tier's F1 with the fewest
escalations on the tune split, and what that threshold does on the report split; and the other
way round); the built-in
``coverage`` threshold for an extractive small tier is this one. Likewise the built-in router's
threshold for ``auto`` (``router_calibration``, the heuristic's score on each question's text):
for the shipped ``cpu`` tiers it sends every question to ``large``, hence their default route
threshold of 0. Answers are cached in
evals/out/answer_quality/answers.jsonl (keyed by question, mode and what the mode's answers
depend on: ``cache_key``), so a re-run only asks what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

from evals.routing_live import exact_match, normalize, token_f1

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RAGROUTE_SQUAD_DIR", ROOT.parent / "shared" / "data" / "qa" / "squad-dev-subset"))
OUT = ROOT / "evals" / "out"
WORK = OUT / "answer_quality"
MODES = ("small", "large", "auto", "cascade")
QUALITY_TARGET = 0.95  # of large-only F1, for the calibrated cascade threshold

log = logging.getLogger("evals.answer_quality")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def contains(prediction: str, answers: list[str]) -> float:
    text = normalize(prediction)
    return float(any(normalize(a) and normalize(a) in text for a in answers))


def citation_precision(answer: str, cited_texts: dict[int, str], answers: list[str]) -> float | None:
    """Share of the answer's citations whose source contains a gold answer (None: no citation)."""
    from pipelines.query.cite import CITATION

    numbers = [int(n) for n in CITATION.findall(answer)]
    if not numbers:
        return None
    good = sum(1 for n in numbers if n in cited_texts and contains(cited_texts[n], answers))
    return good / len(numbers)


def settings(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--set RAGROUTE_KEY=VALUE`` items as overrides of the shipped defaults (a usage error
    for anything else)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("RAGROUTE_"):
            parser.error(f"--set {item!r}: expected RAGROUTE_KEY=VALUE")
        overrides[key] = value
    return overrides


def cpu_pipeline(embedder, store, overrides: dict[str, str] | None = None):
    """The pipeline over the real stages on ``store``, with the shipped defaults (cpu profile)
    and any ``RAGROUTE_*`` ``overrides``, no cache: (pipeline, generator, generation config)."""
    from pipelines.config.budget import BudgetProfile
    from pipelines.config import GenerationConfig, RagConfig, RerankConfig, RoutingConfig
    from pipelines.query.generate import Generator
    from pipelines.query.local import LocalStages
    from pipelines.query.pipeline import QueryPipeline
    from pipelines.query.rerank import make_reranker
    from pipelines.query.route import load_router, router_uses_retrieval

    env = {"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_BUDGET_PROFILE": "cpu", **(overrides or {})}
    gen_cfg = GenerationConfig.from_env(env)
    generator = Generator(gen_cfg)
    routing = RoutingConfig.from_env({})
    router = load_router(routing)
    stages = LocalStages(embedder, store, make_reranker(RerankConfig()), router.router, router.threshold, generator)
    pipeline = QueryPipeline(stages, None, RagConfig.from_env(env), budget=BudgetProfile.from_env(env),
                             tiers=list(gen_cfg.tiers), tier_configs=dict(gen_cfg.tiers),
                             route_uses_retrieval=router_uses_retrieval(routing))
    return pipeline, generator, gen_cfg


def build(data: Path, overrides: dict[str, str] | None = None):
    """The pipeline over the real stages, with the shipped defaults (cpu profile)."""
    from index.store import IndexStore
    from pipelines.config import EmbeddingConfig
    from pipelines.indexing.build import build_index
    from pipelines.indexing.load import load_beir
    from pipelines.query.embed import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    directory = WORK / f"index-{data.name}"
    if not (directory / "manifest.json").is_file():
        build_index(load_beir(data / "corpus.jsonl"), directory, embedder, source=str(data / "corpus.jsonl"))
    store = IndexStore.load(directory, embedding_model=embedder.model_id)
    pipeline, generator, gen_cfg = cpu_pipeline(embedder, store, overrides)
    return pipeline, generator, {c.id: c for c in store.chunks}, gen_cfg


def cache_key(mode: str, gen_cfg, overrides: dict[str, str]) -> str:
    """What a cached answer of ``mode`` depends on: a fixed tier's answer on that tier's settings
    only (so ``large``'s answers serve every small-tier and cascade setting), ``auto`` and
    ``cascade`` on every tier's; both on the prompt version and on the other ``--set`` settings
    (RAGROUTE_TOP_K, ...)."""
    from pipelines.query.prompt import PROMPT_VERSION

    fixed = mode in gen_cfg.tiers
    tiers = [t for name, t in gen_cfg.tiers.items() if not fixed or name == mode]
    # a fixed tier's answer depends neither on the other tiers nor on how tiers are chosen
    ignored = [f"RAGROUTE_{n.upper()}_" for n in gen_cfg.tiers if n != mode] + ["RAGROUTE_CASCADE_", "RAGROUTE_ROUTE"]
    rest = sorted((k, v) for k, v in overrides.items() if not (fixed and k.startswith(tuple(ignored))))
    return "|".join([*(f"{t.name}:{t.engine}:{t.model}:{t.max_tokens}:{t.source_tokens}" for t in tiers),
                     f"prompt {PROMPT_VERSION}", *(f"{k}={v}" for k, v in rest)])


async def answer_all(questions: list[dict], modes: list[str], data: Path,
                     overrides: dict[str, str] | None = None) -> tuple[list[dict], object]:
    from pipelines.query.evidence import coverage
    from pipelines.api.schema import RagRequest

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "answers.jsonl"
    rows = [json.loads(line) for line in path.open()] if path.exists() else []
    pipeline, generator, chunks, gen_cfg = build(data, overrides)
    keys = {mode: cache_key(mode, gen_cfg, overrides or {}) for mode in modes}
    have = {(r["id"], r["mode"]) for r in rows if r["config"] == keys.get(r["mode"])}
    out = [r for r in rows if r["config"] == keys.get(r["mode"])]
    try:
        with path.open("a") as f:
            for mode in modes:
                key = keys[mode]
                for n, q in enumerate(questions):
                    if (q["_id"], mode) in have:
                        continue
                    t0 = time.perf_counter()
                    resp = await pipeline.run(RagRequest(query=q["text"], tier=mode, cache="bypass"), f"{mode}-{n}")
                    wall = (time.perf_counter() - t0) * 1000
                    texts = {i: chunks[s.id].text for i, s in enumerate(resp.sources, 1) if s.id in chunks}
                    row = {
                        "id": q["_id"], "mode": mode, "config": key, "split": "tune" if n % 2 == 0 else "report",
                        "answer": resp.answer, "answers": q["answers"], "tier": resp.route.tier,
                        "model": resp.route.model, "degraded": resp.degraded, "warnings": resp.warnings,
                        "f1": round(token_f1(resp.answer, q["answers"]), 6), "em": exact_match(resp.answer, q["answers"]),
                        "contains": contains(resp.answer, q["answers"]),
                        "coverage": coverage(q["text"], resp.answer).value,
                        "citation_precision": citation_precision(resp.answer, texts, q["answers"]),
                        "tokens_in": resp.usage.tokens_in, "tokens_out": resp.usage.tokens_out,
                        "ttft_ms": resp.usage.ttft_ms, "total_ms": resp.timings_ms["total"], "wall_ms": round(wall, 1),
                        "generate_ms": resp.timings_ms.get("generate"),
                        "gold_retrieved": any(contains(t, q["answers"]) for t in texts.values()),
                    }
                    out.append(row)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    if (n + 1) % 10 == 0:
                        log.info("%s: %d/%d", mode, n + 1, len(questions))
    finally:
        await generator.close()
    return out, gen_cfg


async def measure_raw(rows: list[dict], questions: list[dict], data: Path,
                      overrides: dict[str, str] | None = None) -> None:
    """``raw_ms`` for the report split's fixed-tier rows that lack it (llama.cpp tiers only)."""
    pipeline, generator, _, gen_cfg = build(data, overrides)
    todo = [r for r in rows if r["mode"] in gen_cfg.tiers and r["split"] == "report" and "raw_ms" not in r
            and gen_cfg.tiers[r["mode"]].engine == "llamacpp"]
    text = {q["_id"]: q["text"] for q in questions}
    stages = pipeline.stages
    try:
        for row in todo:
            query = text[row["id"]]
            vector = await stages.embed(query)
            ranked = await stages.rerank(query, (await stages.retrieve(vector, pipeline.cfg.candidates))[0], 4)
            messages, _ = generator.messages(row["mode"], query, ranked, 12_000)
            llm = generator.engines[row["mode"]]._llm
            t0 = time.perf_counter()
            llm.create_chat_completion(messages=messages, max_tokens=max(1, row["tokens_out"]), temperature=0.0)
            row["raw_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    finally:
        await generator.close()
    path = WORK / "answers.jsonl"
    keys = {r["config"] for r in rows}
    others = [line for line in path.read_text().splitlines() if json.loads(line)["config"] not in keys]
    path.write_text("".join(line + "\n" for line in others) + "".join(json.dumps(r) + "\n" for r in rows))


def summarize(rows: list[dict]) -> dict:
    def mean(key: str, rs: list[dict]) -> float | None:
        vals = [r[key] for r in rs if r[key] is not None]
        return round(statistics.fmean(vals), 4) if vals else None

    lat = [r["total_ms"] for r in rows]
    return {
        "n": len(rows), "f1": mean("f1", rows), "em": mean("em", rows), "contains": mean("contains", rows),
        "citation_precision": mean("citation_precision", rows),
        "cited_share": round(sum(r["citation_precision"] is not None for r in rows) / len(rows), 4) if rows else None,
        "degraded_share": round(sum(r["degraded"] for r in rows) / len(rows), 4) if rows else None,
        "latency_ms_p50": pct(lat, 0.5), "latency_ms_p95": pct(lat, 0.95),
        "ttft_ms_p50": pct([r["ttft_ms"] for r in rows if r["ttft_ms"] is not None], 0.5),
        "prompt_tokens_mean": mean("tokens_in", rows), "answer_tokens_mean": mean("tokens_out", rows),
        "large_share": round(sum(r["tier"] == "large" for r in rows) / len(rows), 4) if rows else None,
        "gold_retrieved": mean("gold_retrieved", rows),
        **_overhead(rows),
    }


def _overhead(rows: list[dict]) -> dict:
    pairs = [(r["total_ms"], r["raw_ms"]) for r in rows if r.get("raw_ms")]
    if not pairs:
        return {}
    return {"raw_llamacpp_ms_p50": pct([raw for _, raw in pairs], 0.5),
            "overhead_ratio_p50": round(pct([total / raw for total, raw in pairs], 0.5), 3),
            "overhead_ratio_of_p50s": round(pct([t for t, _ in pairs], 0.5) / pct([raw for _, raw in pairs], 0.5), 3)}


def calibrate_router(rows: list[dict], tiers: list[str], texts: dict[str, str],
                     quality: float = QUALITY_TARGET) -> dict | None:
    """The built-in (heuristic) router's threshold that keeps ``quality`` of the last tier's token
    F1 with the fewest questions on it, chosen on the tune split from the fixed-tier answers and
    applied to the report split (None without both tiers' answers). Scored on the question's text
    alone: the router's one retrieval feature (a weak best match) only ever raises a score."""
    import numpy as np

    from pipelines.query.route import HeuristicRouter, QueryFeatures
    from pipelines.routing.curves import threshold_for_quality

    first, last = tiers[0], tiers[-1]
    router = HeuristicRouter()
    by = {(r["id"], r["mode"]): r for r in rows}
    pairs = {split: [(router.score(texts[i], QueryFeatures()), by[(i, first)]["f1"], by[(i, last)]["f1"])
                     for (i, mode) in by if mode == first and (i, last) in by and by[(i, mode)]["split"] == split]
             for split in ("tune", "report")}
    if not pairs["tune"] or not pairs["report"]:
        return None

    def apply(threshold: float, split: str) -> dict:
        large = np.array([score >= threshold for score, _, _ in pairs[split]])
        f1 = np.array([(lg if go else sm) for go, (_, sm, lg) in zip(large, pairs[split])])
        base = statistics.fmean(lg for _, _, lg in pairs[split])
        return {"n": len(large), "large_share": round(float(large.mean()), 4), "f1": round(float(f1.mean()), 4),
                "f1_share_of_large": round(float(f1.mean()) / base, 4) if base else None}

    cal = threshold_for_quality(*zip(*pairs["tune"]), quality)
    split_at_half = {split: apply(0.5, split) for split in ("tune", "report")}  # the built-in gpu default
    return {"router": router.name, "from": first, "to": last, "quality_target": quality,
            "threshold": cal.threshold, "tune": apply(cal.threshold, "tune"), "report": apply(cal.threshold, "report"),
            "at_0.5": split_at_half}


def analyze(rows: list[dict], modes: list[str], gen_cfg, texts: dict[str, str] | None = None) -> dict:
    result: dict = {"modes": {}, "tuned_max_tokens": {}}
    for mode in modes:
        result["modes"][mode] = {split: summarize([r for r in rows if r["mode"] == mode and r["split"] == split])
                                 for split in ("tune", "report")}
    for tier in gen_cfg.tiers:
        good = [r["tokens_out"] for r in rows if r["mode"] == tier and r["split"] == "tune" and r["f1"] > 0]
        result["tuned_max_tokens"][tier] = {"p95_of_correct_answers": pct(good, 0.95),
                                            "configured": gen_cfg.tiers[tier].max_tokens}
    result["cascade_calibration"] = calibrate_cascade(rows, list(gen_cfg.tiers))
    result["router_calibration"] = calibrate_router(rows, list(gen_cfg.tiers), texts) if texts else None
    report = result["modes"]
    if "large" in report and report["large"]["report"]["f1"]:
        base = report["large"]["report"]["f1"]
        result["routed_vs_large"] = {m: {"f1_share_of_large": round(report[m]["report"]["f1"] / base, 4),
                                         "large_share": report[m]["report"]["large_share"]}
                                     for m in ("auto", "cascade") if m in report and report[m]["report"]["n"]}
    return result


def calibrate_cascade(rows: list[dict], tiers: list[str], signal: str = "coverage",
                      quality: float = QUALITY_TARGET) -> dict | None:
    """The cascade threshold on ``signal`` of the cheapest tier's answers that keeps ``quality`` of
    the last tier's token F1 with the fewest escalations, chosen on the tune split (as ``ragroute
    router calibrate --cascade`` does) and applied to the report split: what a cascade from the
    cheapest tier would do with it, from the fixed-tier answers (None without both tiers' answers)."""
    import numpy as np

    from pipelines.routing.calibrate import escalation_scores, pick

    first, last = tiers[0], tiers[-1]
    by = {(r["id"], r["mode"]): r for r in rows}
    pairs = {split: [(by[(i, first)], by[(i, last)]) for (i, mode) in by
                     if mode == first and (i, last) in by and by[(i, mode)]["split"] == split and signal in by[(i, mode)]]
             for split in ("tune", "report")}
    if not pairs["tune"] or not pairs["report"]:
        return None

    def fit(split: str) -> float:
        cal = pick(escalation_scores([s[signal] for s, _ in pairs[split]]), [s["f1"] for s, _ in pairs[split]],
                   [r["f1"] for _, r in pairs[split]], quality=quality)
        return float(np.nextafter(-cal.threshold, np.inf))  # escalate when the signal is below it

    def apply(threshold: float, split: str) -> dict:
        escalate = np.array([s[signal] < threshold for s, _ in pairs[split]])
        f1 = np.array([(r if e else s)["f1"] for e, (s, r) in zip(escalate, pairs[split])])
        base = statistics.fmean(r["f1"] for _, r in pairs[split])
        return {"n": len(escalate), "large_share": round(float(escalate.mean()), 4), "f1": round(float(f1.mean()), 4),
                "f1_share_of_large": round(float(f1.mean()) / base, 4) if base else None}

    threshold, swapped = fit("tune"), fit("report")
    return {"signal": signal, "from": first, "to": last, "quality_target": quality,
            # unrounded: a threshold just above a signal value escalates that value
            "threshold": threshold, "tune": apply(threshold, "tune"), "report": apply(threshold, "report"),
            # the other fold: chosen on the report split, applied to the tune split
            "swapped": {"threshold": swapped, "tune": apply(swapped, "tune")}}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(result["modes"])
    rep = [result["modes"][m]["report"] for m in modes]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, title in ((axes[0], "f1", "token F1 (report split)"), (axes[1], "contains", "gold answer contained"),
                           (axes[2], "latency_ms_p50", "latency p50 (ms)")):
        ax.bar(modes, [r[key] or 0 for r in rep], color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(modes)])
        ax.set_title(title)
    fig.suptitle("ragroute on SQuAD (shipped cpu defaults, through QueryPipeline)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="BEIR-layout QA folder (queries with answers)")
    parser.add_argument("--limit", type=int, default=60, help="first N questions (half tune, half report)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: tiers, auto, cascade")
    parser.add_argument("--no-raw", action="store_true", help="skip the side-by-side raw llama.cpp timing")
    parser.add_argument("--set", action="append", default=[], metavar="RAGROUTE_KEY=VALUE",
                        help="a setting on top of the shipped defaults, e.g. RAGROUTE_SMALL_ENGINE=extractive "
                             "(repeatable; answers are cached per tier settings)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not (args.data / "queries.jsonl").is_file():
        log.error("no QA data at %s (queries.jsonl); pass --data or set RAGROUTE_SQUAD_DIR", args.data)
        return 2
    questions = [json.loads(line) for line in (args.data / "queries.jsonl").open() if line.strip()][: args.limit]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    overrides = settings(parser, args.set)
    rows, gen_cfg = asyncio.run(answer_all(questions, modes, args.data, overrides))
    if not args.no_raw:
        asyncio.run(measure_raw(rows, questions, args.data, overrides))
    rows = [r for r in rows if r["id"] in {q["_id"] for q in questions} and r["mode"] in modes]
    result = {"config": {"data": str(args.data), "limit": args.limit, "modes": modes, "settings": overrides,
                         "tiers": {n: {"engine": t.engine, "model": t.model, "max_tokens": t.max_tokens, "source_tokens": t.source_tokens}
                                   for n, t in gen_cfg.tiers.items()},
                         "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}},
              **analyze(rows, modes, gen_cfg, {q["_id"]: q["text"] for q in questions})}
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "answer_quality" + "".join(f"-{k.removeprefix('RAGROUTE_').lower()}-{v}" for k, v in sorted(overrides.items()))
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    (OUT / f"{stem}.json").write_text(json.dumps(result, indent=2))
    plot(result, OUT / f"{stem}.png")
    for mode, splits in result["modes"].items():
        r = splits["report"]
        log.info("%-8s report n=%d F1 %.3f EM %.3f contains %.3f cite-prec %s degraded %.1f%% p50 %s ms "
                 "prompt %s tok, large %.0f%%", mode, r["n"], r["f1"] or 0, r["em"] or 0, r["contains"] or 0,
                 r["citation_precision"], 100 * (r["degraded_share"] or 0), r["latency_ms_p50"],
                 r["prompt_tokens_mean"], 100 * (r["large_share"] or 0))
    cal = result["cascade_calibration"]
    if cal:
        log.info("cascade %s -> %s on %s < %.3f (chosen on tune for %.0f%% of %s's F1): report split %.0f%% "
                 "escalated, %.1f%% of %s's F1 (the other way round: %.0f%%, %.1f%%)", cal["from"], cal["to"],
                 cal["signal"], cal["threshold"], 100 * cal["quality_target"], cal["to"],
                 100 * cal["report"]["large_share"], 100 * (cal["report"]["f1_share_of_large"] or 0), cal["to"],
                 100 * cal["swapped"]["tune"]["large_share"], 100 * (cal["swapped"]["tune"]["f1_share_of_large"] or 0))
    cal = result["router_calibration"]
    if cal:
        log.info("auto: the %s router sends a question to %s at score >= %.3f (chosen on tune for %.0f%% of %s's "
                 "F1): report split %.0f%% on %s, %.1f%% of its F1; at 0.5: %.0f%% on %s, %.1f%%", cal["router"],
                 cal["to"], cal["threshold"], 100 * cal["quality_target"], cal["to"], 100 * cal["report"]["large_share"],
                 cal["to"], 100 * (cal["report"]["f1_share_of_large"] or 0), 100 * cal["at_0.5"]["report"]["large_share"],
                 cal["to"], 100 * (cal["at_0.5"]["report"]["f1_share_of_large"] or 0))
    log.info("wrote %s and %s", OUT / f"{stem}.json", OUT / f"{stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
