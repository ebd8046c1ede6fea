"""Which router pays between two tiers on the in-domain QA set: calibrated on the tune half,
reported on the held-out half, from the answers `evals.qa_answers` saved.

    python -m evals.qa_answers --modes large --split all                                   # the cheap model's answers
    python -m evals.qa_answers --modes large --split all --set RAGROUTE_LARGE_MODEL=qwen2.5-coder-1.5b-instruct
    python -m evals.qa_routing --small Qwen2.5-Coder-0.5B --large Qwen2.5-Coder-1.5B

Every question was answered by both models through the real query path (same sources), so any
split of the questions between them can be scored exactly: a question sent to the large model
gets its answer, the others the small model's. Routers compared, each choosing its threshold on
the tune half (the fewest questions to ``large`` that keep ``--keep`` of large's right share there):

- ``heuristic``: the built-in router's score (question text + the best source's cosine);
- ``learned``: ``ragroute router train``'s default method (k-NN + ridge over the query embedding
  and text features) trained on the tune half's labels (the path a deployment follows with its
  own labelled questions: the tune half is written as such a file);
- ``cascade``: the small model answers every question and its answer's mean token
  log-probability decides escalation (latency and cost of both for an escalated question);
- ``random`` and ``oracle`` as the floor and ceiling.

Reported on the test half: right share, share sent to ``large``, latency p50/p95 per question,
and the curve (right share vs share to large). Writes evals/out/qa_routing.{json,png} and the
tune half's labelled file evals/out/qa_routing/tune.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
from datetime import datetime, timezone

import numpy as np

from evals import qa
from evals.answer_quality import OUT, pct

log = logging.getLogger("evals.qa_routing")

WORK = OUT / "qa_routing"


def paired(rows: list[dict], small: str, large: str) -> list[tuple[dict, dict]]:
    """(small's row, large's row) per question answered by both models, by question id."""
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        if "signals" not in r or r["degraded"]:
            continue
        for name in (small, large):
            if r["model"].startswith(name):
                by.setdefault(r["id"], {})[name] = r
    return [(v[small], v[large]) for _, v in sorted(by.items()) if len(v) == 2]


def heuristic_scores(questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The built-in router's score of each question, with the best dense cosine of the demo index
    (what the pipeline passes it: the dense scores of the sources); and the questions' embeddings."""
    from index.store import IndexStore
    from pipelines.config import EmbeddingConfig, RetrievalConfig
    from pipelines.indexing.build import ensure_demo_index
    from pipelines.query.embed import SentenceTransformerEmbedder
    from pipelines.query.route import HeuristicRouter, QueryFeatures

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    store = IndexStore.load(ensure_demo_index(RetrievalConfig.from_env().demo_index_dir, lambda: embedder),
                            embedding_model=embedder.model_id)
    vectors = embedder.encode(questions)
    best = [float(max(h.dense_score for h in store.search(v, 4))) for v in vectors]
    router = HeuristicRouter()
    return np.array([router.score(q, QueryFeatures(retrieval_scores=[b])) for q, b in zip(questions, best)]), vectors


def learned_scores(tune: list[tuple[dict, dict]], questions: dict[str, str], is_tune: np.ndarray,
                   vectors: np.ndarray, seed: int) -> np.ndarray:
    """Train ``ragroute router train``'s default router on the tune half's labels (written as the
    labelled file a deployment would write) and score every question with it: the tune half by
    its out-of-fold scores (what ``--quality`` calibrates on), the test half by the trained router."""
    from pipelines.routing import features, train

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "tune.jsonl"
    with path.open("w") as f:
        for s, l in tune:
            f.write(json.dumps({"query": questions[s["id"]], "small_score": int(s["right"]),
                                "large_score": int(l["right"])}) + "\n")
    rows = train.load_labeled(path)
    artifact, cv = train.train(rows, vectors[is_tune], embedding_model="evals", data_path=path, seed=seed, cv_folds=5)
    feats = features.matrix(list(questions.values()))
    scores = np.array([float(train.predict(artifact.manifest.method, artifact.arrays, v, f)[0])
                       for v, f in zip(vectors, feats)])
    scores[is_tune] = cv
    return scores


def operating_point(scores: np.ndarray, small: np.ndarray, large: np.ndarray, keep: float) -> float:
    """The highest threshold (fewest to large) whose right share on these questions keeps ``keep``
    of large's."""
    from pipelines.routing.curves import threshold_for_quality

    return threshold_for_quality(scores, small, large, keep).threshold


def tier_arrays(pairs: list[tuple[dict, dict]]) -> dict[str, np.ndarray]:
    """Per question: each tier's right (1/0) and latency (s)."""
    return {"small": np.array([float(s["right"]) for s, _ in pairs]), "large": np.array([float(l["right"]) for _, l in pairs]),
            "t_small": np.array([s["total_ms"] / 1000 for s, _ in pairs]),
            "t_large": np.array([l["total_ms"] / 1000 for _, l in pairs])}


def evaluate(name: str, scores: np.ndarray, tiers: dict[str, np.ndarray], tune: np.ndarray, keep: float,
             cascade: bool = False) -> dict:
    from pipelines.routing.curves import curve

    small, large, t_small, t_large = tiers["small"], tiers["large"], tiers["t_small"], tiers["t_large"]
    threshold = operating_point(scores[tune], small[tune], large[tune], keep)
    out = {"router": name, "threshold": round(float(threshold), 6)}
    for part, mask in (("tune", tune), ("test", ~tune)):
        sent = scores[mask] >= threshold
        right = np.where(sent, large[mask], small[mask])
        latency = np.where(sent, t_small[mask] + t_large[mask] if cascade else t_large[mask], t_small[mask])
        c = curve(scores[mask], small[mask], large[mask])
        out[part] = {"questions": int(mask.sum()), "right": round(float(right.mean()), 4),
                     "large_share": round(float(sent.mean()), 4),
                     "kept_of_large": round(float(right.mean() / large[mask].mean()), 4) if large[mask].mean() else None,
                     "latency_s": {"p50": pct(list(latency), 0.5), "p95": pct(list(latency), 0.95)},
                     "apgr": round(c.apgr(), 4), "curve": c.points(21)}
    return out


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in result["routers"]:
        pts = r["test"]["curve"]
        ax.plot([p["large_share"] for p in pts], [p["quality"] for p in pts], label=f"{r['router']} (APGR {r['test']['apgr']:.2f})",
                linestyle=":" if r["router"] in ("random", "oracle") else "-")
        if r["router"] not in ("random", "oracle"):
            ax.scatter([r["test"]["large_share"]], [r["test"]["right"]], marker="o")
    ax.set_xlabel("share of questions sent to the large model")
    ax.set_ylabel("right answers (held-out half)")
    ax.set_title(f"{result['small']} -> {result['large']}\n{result['date'][:10]}, {result['machine']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", default="Qwen2.5-Coder-0.5B", help="the small tier's model name (prefix)")
    parser.add_argument("--large", default="Qwen2.5-Coder-1.5B", help="the large tier's model name (prefix)")
    parser.add_argument("--keep", type=float, default=0.97, help="share of large's right answers to keep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows = [json.loads(line) for line in (OUT / "qa_answers" / "answers.jsonl").open()]
    items = {i.id: i for i in qa.load()}
    pairs = [p for p in paired(rows, args.small, args.large) if p[0]["id"] in items]
    if not pairs:
        raise SystemExit(f"no question answered by both {args.small!r} and {args.large!r}: run evals.qa_answers first")
    tune = np.array([qa.split(items[s["id"]]) == "tune" for s, _ in pairs])
    if tune.all() or not tune.any():
        raise SystemExit("both halves are needed (evals.qa_answers --split all for both models)")
    questions = {s["id"]: items[s["id"]].question for s, _ in pairs}
    heuristic, vectors = heuristic_scores(list(questions.values()))
    tiers = tier_arrays(pairs)
    small, large = tiers["small"], tiers["large"]
    confidence = np.array([s["signals"]["logprob_mean"] if s["signals"]["logprob_mean"] is not None else -99.0
                           for s, _ in pairs])
    rng = np.random.default_rng(args.seed)
    routers = [
        evaluate("heuristic", heuristic, tiers, tune, args.keep),
        evaluate("learned", learned_scores([p for p, t in zip(pairs, tune) if t], questions, tune, vectors, args.seed),
                 tiers, tune, args.keep),
        evaluate("cascade (logprob_mean)", -confidence, tiers, tune, args.keep, cascade=True),
        evaluate("random", rng.random(len(pairs)), tiers, tune, args.keep),
        evaluate("oracle", large - small + 1e-3 * rng.random(len(pairs)), tiers, tune, args.keep),
    ]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": "python -m evals.qa_routing " + " ".join(argv if argv is not None else []),
              "small": args.small, "large": args.large, "keep": args.keep,
              "questions": {"tune": int(tune.sum()), "test": int((~tune).sum())},
              "small_only": {p: round(float(small[m].mean()), 4) for p, m in (("tune", tune), ("test", ~tune))},
              "large_only": {p: round(float(large[m].mean()), 4) for p, m in (("tune", tune), ("test", ~tune))},
              "routers": routers}
    (OUT / "qa_routing.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, OUT / "qa_routing.png")
    lines = [f"small-only {result['small_only']['test']:.1%}, large-only {result['large_only']['test']:.1%} (test)",
             "| router | threshold (tune) | right, test | to large, test | kept of large | p50 / p95 s | APGR |",
             "|---|---|---|---|---|---|---|"]
    for r in routers:
        t = r["test"]
        lines.append(f"| {r['router']} | {r['threshold']:.4f} | {t['right']:.1%} | {t['large_share']:.0%} | "
                     f"{t['kept_of_large']:.1%} | {t['latency_s']['p50']} / {t['latency_s']['p95']} | {t['apgr']} |")
    log.info("wrote %s\n%s", OUT / "qa_routing.json", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
