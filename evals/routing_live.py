"""Routing and cascades with our own tiers, live, on SQuAD (../shared/data/qa/squad-dev-subset).

    python -m evals.routing_live                  # answer every question with every tier (cached), analyse, plot
    python -m evals.routing_live --limit 100      # the first 100 questions only
    python -m evals.routing_live --analyze-only   # re-plot from the cached answers
    make eval-routing-live

1. Index the SQuAD paragraphs (embedding model of the pipeline, cached), and for every question
   run the real query path in process: embed -> FAISS -> rerank (top 4), then generate with
   each tier of the cpu profile (llama.cpp, the packaged GGUFs), without a deadline. Answers
   are scored with SQuAD's exact match and token F1 (citation markers like [1] removed) and
   cached in evals/out/routing_live/answers.jsonl (keyed by question, tier, model, prompt
   version), so a re-run only generates what is missing.
2. Policies, all judged on the same answers (quality = token F1):
   small-only, large-only; the heuristic router; the learned router (5-fold cross-validated:
   trained and calibrated on four folds, scoring the fifth); the cascade on each confidence
   signal (escalate when the small answer's mean or lowest token log-probability, or the share
   of its words found in its sources, or its selfcheck, is below a threshold calibrated on the
   other folds); the routed cascade (the cross-validated learned router sends the questions it
   scores hard to the large tier, the small tier answers the rest and escalates on selfcheck;
   both thresholds calibrated on the other folds with ``calibrate.pick_routed``); plus the random
   and oracle routers for reference. Operating points target 95% of large-only F1.
   Mean latency = retrieval path + router (measured) + the tiers that ran.
3. Writes evals/out/routing_live.json, evals/out/routing_live.png, routing_live/sources.jsonl
   (the reranked sources of each question; re-computed when missing), and the labelled data the
   CLI takes: routing_live/labeled.jsonl (ragroute router train/calibrate) and
   routing_live/cascade.jsonl (ragroute router calibrate --cascade).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import string
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RAGROUTE_SQUAD_DIR", ROOT.parent / "shared" / "data" / "qa" / "squad-dev-subset"))
OUT = ROOT / "evals" / "out"
WORK = OUT / "routing_live"
SOURCES = WORK / "sources.jsonl"
QUALITY_TARGET = 0.95
TOP_K = 4
CANDIDATES = 20
FOLDS = 5
SEED = 0

log = logging.getLogger("evals.routing_live")


# -- SQuAD scoring (the official normalisation) ---------------------------------------------------
def normalize(text: str) -> str:
    text = re.sub(r"\[\d+\]", " ", text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    return float(any(normalize(prediction) == normalize(a) for a in answers))


def token_f1(prediction: str, answers: list[str]) -> float:
    pred = normalize(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if common == 0 or not pred or not gold:
            continue
        p, r = common / len(pred), common / len(gold)
        best = max(best, 2 * p * r / (p + r))
    return best


# -- generation (cached) --------------------------------------------------------------------------
def load_questions(limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / "queries.jsonl").open() if line.strip()]
    return rows[:limit] if limit else rows


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()] if path.exists() else []


def ensure_index(embedder):
    from index.store import IndexStore
    from pipelines.indexing.build import build_index
    from pipelines.indexing.load import load_beir

    directory = WORK / "index"
    if not (directory / "manifest.json").is_file():
        log.info("indexing %s", DATA / "corpus.jsonl")
        build_index(load_beir(DATA / "corpus.jsonl"), directory, embedder, source=str(DATA / "corpus.jsonl"))
    return IndexStore.load(directory, embedding_model=embedder.model_id)


async def generate_all(questions: list[dict], tiers: list[str] | None) -> None:
    from pipelines.config import EmbeddingConfig, GenerationConfig, RerankConfig
    from pipelines.query.embed import SentenceTransformerEmbedder
    from pipelines.query.generate import Generator
    from pipelines.query.prompt import PROMPT_VERSION
    from pipelines.query.rerank import make_reranker

    WORK.mkdir(parents=True, exist_ok=True)
    gen_cfg = GenerationConfig.from_env({**os.environ, "RAGROUTE_GEN_PROFILE": "cpu"})
    tiers = tiers or list(gen_cfg.tiers)
    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    store = ensure_index(embedder)
    reranker = make_reranker(RerankConfig())
    generator = Generator(gen_cfg)

    answers_path, features_path = WORK / "answers.jsonl", WORK / "features.jsonl"
    done = {(a["id"], a["tier"], a["model"], a["prompt_version"]) for a in _jsonl(answers_path)}
    have_features = {f["id"] for f in _jsonl(features_path)}
    have_sources = {f["id"] for f in _jsonl(SOURCES)}
    try:
        with answers_path.open("a") as answers, features_path.open("a") as features, SOURCES.open("a") as sources:
            for n, q in enumerate(questions, 1):
                t0 = time.perf_counter()
                vector = embedder.encode([q["text"]])[0]
                candidates = store.search(vector, CANDIDATES)
                ranked = reranker.rerank(q["text"], candidates, TOP_K)
                pre_ms = (time.perf_counter() - t0) * 1000
                if q["_id"] not in have_sources:
                    sources.write(_sources_row(q["_id"], ranked))
                if q["_id"] not in have_features:
                    features.write(json.dumps({
                        "id": q["_id"], "query": q["text"], "answers": q["answers"], "pre_ms": round(pre_ms, 3),
                        "retrieval_scores": [round(c.score, 6) for c in candidates[:TOP_K]],
                        "sources": [c.chunk.doc_id for c in ranked], "vector": [round(float(x), 6) for x in vector],
                    }) + "\n")
                for tier in tiers:
                    model = gen_cfg.tiers[tier].model
                    if (q["_id"], tier, model, PROMPT_VERSION) in done:
                        continue
                    g = await generator.generate(tier, q["text"], ranked)
                    answers.write(json.dumps({
                        "id": q["_id"], "tier": tier, "model": model, "prompt_version": PROMPT_VERSION,
                        "text": g.text, "em": exact_match(g.text, q["answers"]), "f1": round(token_f1(g.text, q["answers"]), 6),
                        "finish_reason": g.finish_reason, "tokens_in": g.tokens_in, "tokens_out": g.tokens_out,
                        "latency_ms": g.latency_ms, "ttft_ms": g.ttft_ms, "logprob_mean": g.logprob_mean,
                        "logprob_min": g.logprob_min, "cost_usd": g.cost_usd,
                    }) + "\n")
                    answers.flush()
                features.flush()
                sources.flush()
                if n % 10 == 0:
                    log.info("%d/%d questions answered", n, len(questions))
    finally:
        await generator.close()


def _sources_row(qid: str, ranked) -> str:
    return json.dumps({"id": qid, "sources": [c.model_dump(mode="json") for c in ranked]}) + "\n"


def ensure_sources(d: dict) -> list[list]:
    """The reranked sources each question was answered from (``routing_live/sources.jsonl``; runs
    from before that file existed get them re-computed: the same embedding, index and reranker
    give the same sources), as ScoredChunk lists in the order of ``d["ids"]``."""
    from pipelines.config import RerankConfig
    from pipelines.query.rerank import make_reranker
    from common.records import ScoredChunk

    have = {r["id"]: r["sources"] for r in _jsonl(SOURCES)}
    missing = [i for i, qid in enumerate(d["ids"]) if qid not in have]
    if missing:
        from pipelines.config import EmbeddingConfig
        from pipelines.query.embed import SentenceTransformerEmbedder

        log.info("re-computing the sources of %d questions (%s)", len(missing), SOURCES)
        store = ensure_index(SentenceTransformerEmbedder(EmbeddingConfig(device="cpu")))
        reranker = make_reranker(RerankConfig())
        with SOURCES.open("a") as f:
            for i in missing:
                ranked = reranker.rerank(d["queries"][i], store.search(d["vectors"][i], CANDIDATES), TOP_K)
                f.write(_sources_row(d["ids"][i], ranked))
                have[d["ids"][i]] = [c.model_dump(mode="json") for c in ranked]
    return [[ScoredChunk.model_validate(c) for c in have[qid]] for qid in d["ids"]]


# -- analysis -------------------------------------------------------------------------------------
def _dataset(questions: list[dict]) -> dict:
    """Per question (in order, only those answered by both tiers): features and both answers."""
    feats = {f["id"]: f for f in _jsonl(WORK / "features.jsonl")}
    by = {}
    for a in _jsonl(WORK / "answers.jsonl"):
        by[(a["id"], a["tier"])] = a  # the last written wins (a newer model or prompt version)
    rows = [(feats[q["_id"]], by[(q["_id"], "small")], by[(q["_id"], "large")]) for q in questions
            if q["_id"] in feats and (q["_id"], "small") in by and (q["_id"], "large") in by]
    if len(rows) < 2 * FOLDS:
        raise SystemExit(f"only {len(rows)} questions have answers from both tiers; run without --analyze-only")
    return {
        "ids": [f["id"] for f, _, _ in rows],
        "queries": [f["query"] for f, _, _ in rows],
        "retrieval": [f["retrieval_scores"] for f, _, _ in rows],
        "vectors": np.array([f["vector"] for f, _, _ in rows], dtype=np.float32),
        "pre_ms": np.array([f["pre_ms"] for f, _, _ in rows]),
        "small": [s for _, s, _ in rows],
        "large": [l for _, _, l in rows],
    }


def _router_overhead(fn, inputs, repeat: int = 3) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        for x in inputs:
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 4), "p95_ms": round(float(np.percentile(times, 95)), 4)}


def analyze(questions: list[dict]) -> dict:
    from pipelines.config import DEFAULT_CASCADE_THRESHOLDS, EmbeddingConfig
    from pipelines.query import selfcheck
    from pipelines.query.route import HeuristicRouter, LearnedRouter, QueryFeatures
    from pipelines.query.safety import grounding
    from pipelines.routing import calibrate, curves, train
    from pipelines.routing.train import LabeledQuery

    d = _dataset(questions)
    n = len(d["ids"])
    small_f1 = np.array([a["f1"] for a in d["small"]])
    large_f1 = np.array([a["f1"] for a in d["large"]])
    small_ms = np.array([a["latency_ms"] for a in d["small"]])
    large_ms = np.array([a["latency_ms"] for a in d["large"]])
    small_cost = np.array([a["cost_usd"] for a in d["small"]])
    large_cost = np.array([a["cost_usd"] for a in d["large"]])
    # the small answer's confidence signals, as the cascade computes them (pipelines/query/modes/cascade.py)
    signals = {
        "logprob_mean": np.array([a["logprob_mean"] if a["logprob_mean"] is not None else -99.0 for a in d["small"]]),
        "logprob_min": np.array([a["logprob_min"] if a["logprob_min"] is not None else -99.0 for a in d["small"]]),
        "grounded": np.array([grounding(a["text"], src) for a, src in zip(d["small"], ensure_sources(d))]),
        "selfcheck": np.array([selfcheck.check(a["text"], a.get("finish_reason")).confidence for a in d["small"]]),
    }

    WORK.mkdir(parents=True, exist_ok=True)
    with (WORK / "labeled.jsonl").open("w") as f:
        for q, s, l in zip(d["queries"], small_f1, large_f1):
            f.write(json.dumps({"query": q, "small_score": float(s), "large_score": float(l)}) + "\n")
    with (WORK / "cascade.jsonl").open("w") as f:
        for i, (s, l) in enumerate(zip(small_f1, large_f1)):
            f.write(json.dumps({"query": d["queries"][i], **{k: float(v[i]) for k, v in signals.items()},
                                "small_score": float(s), "large_score": float(l)}) + "\n")

    heuristic = HeuristicRouter()
    feats = [QueryFeatures(query_vector=v.tolist(), retrieval_scores=r) for v, r in zip(d["vectors"], d["retrieval"])]
    h_scores = np.array([heuristic.score(q, f) for q, f in zip(d["queries"], feats)])

    rows = [LabeledQuery(q, int(l > s), float(s), float(l)) for q, s, l in zip(d["queries"], small_f1, large_f1)]
    fold_ids = train.folds(n, FOLDS, SEED)
    learned_cv = np.zeros(n)
    decisions = {"heuristic": np.zeros(n, bool), "learned": np.zeros(n, bool),
                 **{f"cascade ({k})": np.zeros(n, bool) for k in signals}}
    thresholds: dict[str, list[float]] = {k: [] for k in decisions}
    routed = "routed cascade (learned + selfcheck)"
    routed_large, routed_direct = np.zeros(n, bool), np.zeros(n, bool)
    thresholds[routed] = []
    last_artifact = None
    for test in fold_ids:
        tr = np.setdiff1d(np.arange(n), test)
        artifact, inner_cv = train.train([rows[i] for i in tr], d["vectors"][tr],
                                         embedding_model=EmbeddingConfig().model, seed=SEED)
        last_artifact = artifact
        router = LearnedRouter(artifact)
        learned_cv[test] = [router.score(d["queries"][i], feats[i]) for i in test]
        # thresholds calibrated on the training folds only
        cal = calibrate.pick(inner_cv, small_f1[tr], large_f1[tr], quality=QUALITY_TARGET)
        decisions["learned"][test] = learned_cv[test] >= cal.threshold
        thresholds["learned"].append(cal.threshold)
        cal = calibrate.pick(h_scores[tr], small_f1[tr], large_f1[tr], quality=QUALITY_TARGET)
        decisions["heuristic"][test] = h_scores[test] >= cal.threshold
        thresholds["heuristic"].append(cal.threshold)
        for name, signal in signals.items():
            key = f"cascade ({name})"
            cal = calibrate.pick(calibrate.escalation_scores(signal[tr]), small_f1[tr], large_f1[tr],
                                 quality=QUALITY_TARGET)
            decisions[key][test] = -signal[test] >= cal.threshold
            thresholds[key].append(float(np.nextafter(-cal.threshold, np.inf)))
        found = calibrate.pick_routed(inner_cv, signals["selfcheck"][tr], small_f1[tr], large_f1[tr],
                                      signal="selfcheck", quality=QUALITY_TARGET)
        routed_direct[test], routed_large[test] = found.apply(learned_cv[test], signals["selfcheck"][test])
        thresholds[routed].append(found.route_threshold)

    learned = LearnedRouter(last_artifact)
    # router overhead per query, embedding excluded (the pipeline has the vector already)
    overhead = {
        "heuristic": _router_overhead(lambda i: heuristic.score(d["queries"][i], feats[i]), range(n)),
        "learned": _router_overhead(lambda i: learned.score(d["queries"][i], feats[i]), range(n)),
    }
    route_ms = {"heuristic": overhead["heuristic"]["p50_ms"], "learned": overhead["learned"]["p50_ms"]}

    def point(name: str, to_large: np.ndarray, *, cascade: bool = False, router: str | None = None,
              small_ran: np.ndarray | None = None) -> dict:
        """``cascade``: every question was answered small first, or those in ``small_ran``
        (a routed start, whose ``router`` also ran)."""
        f1 = np.where(to_large, large_f1, small_f1)
        em = np.where(to_large, [a["em"] for a in d["large"]], [a["em"] for a in d["small"]])
        if cascade:
            ran = np.ones(n, bool) if small_ran is None else small_ran
            ms = d["pre_ms"] + (route_ms[router] if router else 0.0) + np.where(ran, small_ms, 0.0) + \
                np.where(to_large, large_ms, 0.0)
            cost = np.where(ran, small_cost, 0.0) + np.where(to_large, large_cost, 0.0)
        else:
            ms = d["pre_ms"] + (route_ms[router] if router else 0.0) + np.where(to_large, large_ms, small_ms)
            cost = np.where(to_large, large_cost, small_cost)
        return {"policy": name, "large_share": round(float(to_large.mean()), 4), "f1": round(float(f1.mean()), 4),
                "em": round(float(np.mean(em)), 4), "f1_vs_large_only": round(float(f1.mean() / large_f1.mean()), 4),
                "mean_latency_ms": round(float(ms.mean()), 1), "p95_latency_ms": round(float(np.percentile(ms, 95)), 1),
                "mean_cost_usd": float(f"{cost.mean():.3g}")}

    points = [
        point("small-only", np.zeros(n, bool)),
        point("large-only", np.ones(n, bool)),
        point("heuristic router", decisions["heuristic"], router="heuristic"),
        point("learned router (5-fold CV)", decisions["learned"], router="learned"),
        *(point(f"cascade ({k})", decisions[f"cascade ({k})"], cascade=True) for k in signals),
        {**point(routed, routed_large, cascade=True, router="learned", small_ran=~routed_direct),
         "small_share": round(float((~routed_direct).mean()), 4)},
    ]
    c = {
        "random": curves.random_curve(small_f1, large_f1),
        "oracle": curves.curve(curves.oracle_scores(small_f1, large_f1), small_f1, large_f1),
        "heuristic": curves.curve(h_scores, small_f1, large_f1),
        "learned (CV)": curves.curve(learned_cv, small_f1, large_f1),
        **{f"cascade ({k})": curves.curve(calibrate.escalation_scores(v), small_f1, large_f1)
           for k, v in signals.items()},
        # the route threshold varies along the curve; the self-check at its built-in threshold
        routed: curves.curve(calibrate.routed_order(learned_cv, signals["selfcheck"],
                                                    DEFAULT_CASCADE_THRESHOLDS["selfcheck"]), small_f1, large_f1),
    }
    summary = {name: {"apgr": round(cv.apgr(), 4),
                      "large_share_for_95pct": cv.share_for(QUALITY_TARGET * cv.large_only)} for name, cv in c.items()}
    # each signal's cascade threshold over all answers (what DEFAULT_CASCADE_THRESHOLDS are set from)
    full = {k: calibrate.pick(calibrate.escalation_scores(v), small_f1, large_f1, quality=QUALITY_TARGET)
            for k, v in signals.items()}
    result = {
        "dataset": str(DATA), "questions": n, "tiers": {"small": d["small"][0]["model"], "large": d["large"][0]["model"]},
        "quality": "SQuAD token F1 (exact match also reported)", "target": f"{QUALITY_TARGET:.0%} of large-only F1",
        "per_tier": {t: {"f1": round(float(np.mean([a["f1"] for a in d[t]])), 4),
                         "em": round(float(np.mean([a["em"] for a in d[t]])), 4),
                         "mean_latency_ms": round(float(np.mean([a["latency_ms"] for a in d[t]])), 1),
                         "mean_tokens_out": round(float(np.mean([a["tokens_out"] for a in d[t]])), 1)}
                     for t in ("small", "large")},
        "retrieval_path_ms_mean": round(float(d["pre_ms"].mean()), 1),
        "operating_points": points,
        "curves": {name: {**summary[name], "points": cv.points(51)} for name, cv in c.items()},
        "cv_thresholds": {k: [round(float(x), 4) for x in v] for k, v in thresholds.items()},
        "cascade_thresholds_all_data": {k: {"threshold": round(float(np.nextafter(-cal.threshold, np.inf)), 4),
                                            "escalated": round(cal.large_share, 4), "f1": round(cal.quality, 4)}
                                        for k, cal in full.items()},
        "router_overhead_ms": overhead,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    (OUT / "routing_live.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, c, OUT / "routing_live.png")
    return result


def plot(result: dict, c: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for name, cv in c.items():
        style = {"random": ":", "oracle": "--"}.get(name, "-")
        ax1.plot(cv.share, cv.quality, style, label=f"{name} (APGR {cv.apgr():.2f})")
    large = result["per_tier"]["large"]["f1"]
    ax1.axhline(QUALITY_TARGET * large, color="grey", lw=0.8)
    ax1.set_xlabel("share of questions answered by the large tier (cascade: escalated)")
    ax1.set_ylabel("token F1")
    ax1.set_title(f"SQuAD, {result['questions']} questions: quality vs large-tier share")
    ax1.legend(fontsize=8)
    for p, marker in zip(result["operating_points"], "osD^vPX*hd"):
        ax2.scatter(p["mean_latency_ms"], p["f1"], marker=marker, s=50,
                    label=f"{p['policy']}: {p['large_share']:.0%} large, {p['f1_vs_large_only']:.0%} of large-only F1")
    ax2.legend(fontsize=7, loc="lower right")
    ax2.set_xlabel("mean latency per question, ms (retrieval + routing + generation)")
    ax2.set_ylabel("token F1")
    ax2.set_title(f"operating points calibrated for {QUALITY_TARGET:.0%} of large-only F1 (5-fold CV)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--analyze-only", action="store_true", help="no generation: analyse the cached answers")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (DATA / "queries.jsonl").is_file():
        log.error("SQuAD subset not found at %s (set RAGROUTE_SQUAD_DIR)", DATA)
        return 2
    questions = load_questions(args.limit)
    if not args.analyze_only:
        asyncio.run(generate_all(questions, None))
    result = analyze(questions)
    log.info("per tier: %s", result["per_tier"])
    for point in result["operating_points"]:
        log.info("%-28s large %5.1f%%  F1 %.4f (%.1f%% of large-only)  EM %.4f  mean %.0f ms", point["policy"],
                 100 * point["large_share"], point["f1"], 100 * point["f1_vs_large_only"], point["em"],
                 point["mean_latency_ms"])
    log.info("router overhead: %s", result["router_overhead_ms"])
    log.info("wrote %s and %s", OUT / "routing_live.json", OUT / "routing_live.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
