"""Can the cache tell when a cached answer answers a new question? Each signal the cache could
decide on, and the judge that combines them (pipelines/query/cache/judge.py), measured on the
same pairs: fitted on the tune half, reported on the held-out half.

    python -m evals.cache_judge                   # ~11 min on 2 cores (the judge: ~0.9 s a pair)
    python -m evals.cache_judge --fit             # the same, and writes pipelines/query/cache/judge.json
    python -m evals.cache_judge --reuse           # the judge's scores from the last run's pairs file
    python -m evals.cache_judge --limit 20 --judge off

Pairs: every (question, rewording) of evals/data/cache_paraphrases.jsonl is a positive (its
cached answer is right), every (question, near-miss) a negative, and each question's nearest
other entry (evals/data/cache_neighbours.jsonl: what a question the cache has not seen meets)
is what its hand label says. The halves: by the sha256 of the cached question (a question, its
rewordings, near-misses and neighbour are in one half). Signals, each a score where higher
means "serve the cached answer":

- ``cosine``: the packaged MiniLM embeddings' cosine (what the cache's candidate search sees).
- ``verifier``: the shipped hit verifier (verify.py): a near-miss rule's veto -1, else P(same
  question) (1 for near-identical wording it does not score).
- ``sources``: each question's first source among the other's first four, as the shipped
  retrieval and rerank order them (0-2).
- ``rare terms``: the corpus-IDF-weighted overlap of the two questions' words (reported, not
  used: on this set it works backwards, see docs/cache.md).
- ``judge``: the cpu profile's large tier's model (sha256-pinned) asked, with worked examples,
  whether the questions ask for exactly the same information; its log-odds of Yes over No.
- ``combined``: the logistic regression of judge, verifier, sources and cosine fitted on the
  tune half (what judge.json ships).

For each, on the held-out half: ROC AUC (right pairs above wrong ones; 0.5 is chance) and the
share of right pairs passed at <= ``--max-near-miss`` (2%) of wrong ones, the threshold chosen
on the held-out pairs themselves (an upper bound for a cut on that signal). For ``combined``
also the honest figures: the threshold chosen on the tune half, applied to the held-out half,
per kind of pair (rewordings, near-misses, neighbours) with 95% Clopper-Pearson intervals. Also how many pairs reach cosine floors (a pair below the cache's
floor is never judged).

Writes evals/out/cache_judge.json, the pairs' scores to evals/out/cache_judge-pairs.jsonl,
the ROC curves to docs/cache-judge-roc.png, and logs a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

from evals.serving import ROOT

log = logging.getLogger("evals.cache_judge")

DATA = ROOT / "evals" / "data" / "cache_paraphrases.jsonl"
NEIGHBOURS = ROOT / "evals" / "data" / "cache_neighbours.jsonl"
OUT = ROOT / "evals" / "out" / "cache_judge.json"
PAIRS_OUT = ROOT / "evals" / "out" / "cache_judge-pairs.jsonl"
PLOT = ROOT / "docs" / "cache-judge-roc.png"
FLOORS = (0.3, 0.4, 0.5, 0.6, 0.8)
L2 = 1.0  # the combination's ridge penalty (features are on unit-ish scales; 4 weights)


@dataclass(frozen=True)
class Pair:
    question: str  # the cached one
    other: str  # the one asked
    same: bool  # one answer serves both: a rewording (True), a near-miss (False), a neighbour (labelled)
    kind: str = ""  # rewording | near-miss | neighbour


def load_pairs(path: Path = DATA, limit: int | None = None) -> list[Pair]:
    items = [json.loads(line) for line in path.open() if line.strip()][:limit]
    return [Pair(it["question"], r, True, "rewording") for it in items for r in it["rewordings"]] + \
           [Pair(it["question"], n, False, "near-miss") for it in items for n in it["near_misses"]]


def load_neighbours(path: Path = NEIGHBOURS, limit: int | None = None) -> list[Pair]:
    """Each cached question and its nearest other entry's question, labelled by hand
    (evals/data/README.md); with ``limit``, those of the first ``limit`` questions."""
    rows = [json.loads(line) for line in path.open() if line.strip()]
    questions = [json.loads(line)["question"] for line in DATA.open() if line.strip()][:limit]
    keep = set(questions)
    return [Pair(r["question"], r["other"], bool(r["same"]), "neighbour") for r in rows if r["question"] in keep]


def labels(pairs: list[Pair]) -> np.ndarray:
    """True for a rewording, False for a near-miss, one per pair."""
    return np.array([p.same for p in pairs])


def in_tune(question: str) -> bool:
    """The tune half: stable across runs and machines, by the cached question."""
    return int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) % 2 == 0


def auc(scores: np.ndarray, same: np.ndarray) -> float:
    """P(a random rewording scores above a random near-miss), ties counted half (Mann-Whitney)."""
    pos, neg = int(same.sum()), int((~same).sum())
    if not pos or not neg:
        raise ValueError("need both rewordings and near-misses")
    ranks = rankdata(scores)
    return float((ranks[same].sum() - pos * (pos + 1) / 2) / (pos * neg))


def passed_at(scores: np.ndarray, same: np.ndarray, max_near_miss: float) -> tuple[float, float, float]:
    """(threshold, share of rewordings above it, share of near-misses above it) for the lowest
    threshold among the scores that lets at most ``max_near_miss`` of near-misses through
    (strictly above the threshold passes)."""
    neg = np.sort(scores[~same])
    allowed = int(np.floor(max_near_miss * len(neg)))
    threshold = float(neg[len(neg) - 1 - allowed])  # the (allowed+1)-th highest near-miss: it and below fail
    return threshold, float((scores[same] > threshold).mean()), float((scores[~same] > threshold).mean())


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, float]:
    """L2-penalized logistic regression (the intercept unpenalized): (weights, intercept)."""
    yy = y.astype(float)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w[1:] + w[0]
        p = 1.0 / (1.0 + np.exp(-z))
        nll = float(np.sum(np.logaddexp(0.0, z) - yy * z)) + 0.5 * l2 * float(w[1:] @ w[1:])
        grad = np.concatenate([[np.sum(p - yy)], x.T @ (p - yy) + l2 * w[1:]])
        return nll, grad

    w = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B").x
    return w[1:], float(w[0])


class Judge:
    """A chat model's log-odds of "Yes" over "No" as its first token, with judge.py's prompt.
    The system turn is evaluated once and kept in the KV cache; each pair evaluates only its own
    tokens."""

    def __init__(self, path: Path, threads: int) -> None:
        from llama_cpp import Llama

        from pipelines.query.cache.judge import system_turn

        self.llm = Llama(model_path=str(path), n_ctx=1024, n_threads=threads, verbose=False)
        self.prefix = self._tokens(system_turn())
        self.yes = self._first_tokens(["Yes", "yes", " Yes"])
        self.no = self._first_tokens(["No", "no", " No"])
        self.llm.eval(self.prefix)

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def _first_tokens(self, words: list[str]) -> list[int]:
        return sorted({self.llm.tokenize(w.encode(), add_bos=False, special=False)[0] for w in words})

    def score(self, question: str, other: str) -> float:
        from pipelines.query.cache.judge import pair_turn

        self.llm.n_tokens = len(self.prefix)  # keep the system turn, drop the previous pair
        self.llm.eval(self._tokens(pair_turn(question, other)))
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return float(np.logaddexp.reduce(logits[self.yes]) - np.logaddexp.reduce(logits[self.no]))


def judge_model() -> tuple[str, Path]:
    from pipelines import models
    from pipelines.config.generation import TIER_PROFILES

    name = str(TIER_PROFILES["cpu"]["large"]["model"])
    return name, models.verified_path(name)


_WORD = re.compile(r"[a-z_][a-z0-9_]*")


def retrieval_signals(texts: list[str], vecs: dict[str, np.ndarray]) -> tuple[dict[str, list[str]], dict[str, float], int]:
    """Each text's first four sources as the shipped retrieval and rerank order them, the corpus
    IDF of every word (over chunks), and the number of chunks."""
    from index.store import IndexStore
    from pipelines.config import EmbeddingConfig, RagConfig, RetrievalConfig, SearchConfig
    from pipelines.indexing.build import ensure_demo_index
    from pipelines.query.embed import SentenceTransformerEmbedder
    from pipelines.query.rerank import FusionOrder
    from pipelines.query.retrieve import search

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    store = IndexStore.load(ensure_demo_index(RetrievalConfig.from_env().demo_index_dir, lambda: embedder),
                            embedding_model=embedder.model_id)
    n = RagConfig.from_env().candidates
    order = FusionOrder()
    top = {t: [c.chunk.doc_id for c in order.rerank(t, search(store, SearchConfig(), vecs[t], t, n), 4)]
           for t in texts}
    df: dict[str, int] = {}
    for chunk in store.chunks:
        for w in set(_WORD.findall(chunk.text.lower())):
            df[w] = df.get(w, 0) + 1
    return top, {w: math.log((len(store.chunks) + 1) / (c + 1)) for w, c in df.items()}, len(store.chunks)


def rare_term_overlap(a: str, b: str, idf: dict[str, float], unseen: float) -> float:
    wa, wb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    weight = lambda ws: sum(idf.get(w, unseen) for w in ws)  # noqa: E731
    union = weight(wa | wb)
    return weight(wa & wb) / union if union else 0.0


def score_all(pairs: list[Pair], judge: Judge | None, reuse: dict[tuple[str, str], float] | None
              ) -> tuple[dict[str, np.ndarray], dict]:
    from evals.cache_verifier import embed_all
    from pipelines.query.cache.judge import VETOED, sources_agree
    from pipelines.query.cache.verify import HitVerifier

    texts = sorted({t for p in pairs for t in (p.question, p.other)})
    vecs = embed_all(texts, OUT.parent / "cache")
    cosine = np.array([float(vecs[p.question] @ vecs[p.other]) for p in pairs])
    verifier = HitVerifier.load()
    verdicts = verifier.check_many([(p.question, p.other, float(c), vecs[p.question], vecs[p.other])
                                    for p, c in zip(pairs, cosine, strict=True)])
    vetoed = np.array([v.probability is None and not v.accept for v in verdicts])
    top, idf, chunks = retrieval_signals(texts, vecs)
    unseen = math.log(chunks + 1)
    scores = {"cosine": cosine,
              "verifier": np.array([VETOED if x else (1.0 if v.probability is None else v.probability)
                                    for v, x in zip(verdicts, vetoed, strict=True)]),
              "sources": np.array([float(sources_agree(top[p.question], top[p.other])) for p in pairs]),
              "rare terms": np.array([rare_term_overlap(p.question, p.other, idf, unseen) for p in pairs])}
    same = labels(pairs)
    meta = {"vetoed_by_rules": {"right": int((vetoed & same).sum()), "wrong": int((vetoed & ~same).sum())}}
    if reuse is not None:
        scores["judge"] = np.array([reuse[(p.question, p.other)] for p in pairs])
        meta["judge_reused_from"] = str(PAIRS_OUT)
    elif judge is not None:
        times, out = [], []
        for p in pairs:
            t0 = time.perf_counter()
            out.append(judge.score(p.question, p.other))
            times.append((time.perf_counter() - t0) * 1000)
        scores["judge"] = np.array(out)
        meta["judge_ms_per_pair"] = {"p50": round(statistics.median(times), 1),
                                     "p95": round(float(np.percentile(times, 95)), 1)}
    return scores, meta


def report(same: np.ndarray, scores: dict[str, np.ndarray], max_near_miss: float) -> dict[str, dict]:
    rows = {}
    for name, s in scores.items():
        threshold, rewordings, near = passed_at(s, same, max_near_miss)
        rows[name] = {"auc": round(auc(s, same), 3), "threshold": round(threshold, 3),
                      "right_passed": round(rewordings, 3), "wrong_passed": round(near, 3),
                      "median_right": round(float(np.median(s[same])), 3),
                      "median_wrong": round(float(np.median(s[~same])), 3)}
    return rows


def combine(scores: dict[str, np.ndarray], same: np.ndarray, kinds: np.ndarray, tune: np.ndarray,
            max_near_miss: float) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """The combined judge fitted on the tune half (every kind of pair): (P for every pair,
    weights, intercept, the honest held-out figures at the threshold that lets at most
    ``max_near_miss`` of the tune half's wrong pairs through)."""
    from pipelines.query.cache.judge import FEATURES
    from pipelines.query.cache.policy import interval

    x = np.column_stack([scores[f] for f in FEATURES])
    coef, intercept = fit_logistic(x[tune], same[tune])
    p = 1.0 / (1.0 + np.exp(-(x @ coef + intercept)))
    threshold, tune_right, tune_wrong = passed_at(p[tune], same[tune], max_near_miss)
    test = ~tune
    honest: dict = {"threshold_from_tune": round(threshold, 4), "tune_right_passed": round(tune_right, 3),
                    "tune_wrong_passed": round(tune_wrong, 3)}
    groups = {"rewordings": test & (kinds == "rewording"), "near_misses": test & (kinds == "near-miss"),
              "neighbours_different": test & (kinds == "neighbour") & ~same,
              "neighbours_same": test & (kinds == "neighbour") & same,
              "all_wrong": test & ~same}
    for name, mask in groups.items():
        k, n = int((p[mask] > threshold).sum()), int(mask.sum())
        low, high = interval(k, n)
        honest[f"test_{name}_passed"] = {"share": round(k / n, 3) if n else None, "count": [k, n],
                                         "ci95": [round(low, 3), round(high, 3)]}
    return p, coef, intercept, honest


def prior_bands(p: np.ndarray, same: np.ndarray) -> tuple[list[int], list[int]]:
    from pipelines.query.cache.policy import band

    pairs, wrong = [0] * 10, [0] * 10
    for prob, ok in zip(p, same, strict=True):
        b = band(float(prob))
        pairs[b] += 1
        wrong[b] += int(not ok)
    return pairs, wrong


def write_artifact(coef: np.ndarray, intercept: float, model_name: str, pairs: list[int], wrong: list[int],
                   meta: dict) -> Path:
    from pipelines.query.cache.judge import FORMAT_VERSION, JUDGE_FILE, CacheJudge, model_sha256

    judge = CacheJudge(tuple(round(float(c), 6) for c in coef), round(float(intercept), 6), model_name,
                       tuple(pairs), tuple(wrong))
    model = judge.to_model()
    data_sha = hashlib.sha256(DATA.read_bytes()).hexdigest()
    artifact = {"manifest": {"format_version": FORMAT_VERSION, "model_sha256": model_sha256(model),
                             "training_data": "evals/data/cache_paraphrases.jsonl (tune half, by in_tune)",
                             "training_data_sha256": data_sha, "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                            time.gmtime()),
                             **meta},
                "model": model}
    JUDGE_FILE.write_text(json.dumps(artifact, indent=2) + "\n")
    CacheJudge.load(JUDGE_FILE, model_name)  # what was written loads
    return JUDGE_FILE


def roc_points(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(near-misses passed, rewordings passed) at every distinct threshold, highest first: tied
    scores pass or fail together (a signal with three values has three points, not a staircase
    ordered by how the pairs happen to be listed)."""
    cuts = np.unique(scores)[::-1]
    tp = [0.0] + [float((scores[same] >= c).mean()) for c in cuts]
    fp = [0.0] + [float((scores[~same] >= c).mean()) for c in cuts]
    return np.array(fp), np.array(tp)


def plot(scores: dict[str, np.ndarray], same: np.ndarray, test: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    y = same[test]
    for name, s in scores.items():
        fp, tp = roc_points(s[test], y)
        ax.plot(fp, tp, label=f"{name} (AUC {auc(s[test], y):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    ax.axvline(0.02, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("wrong pairs passed (near-misses, other questions)")
    ax.set_ylabel("right pairs passed (rewordings, same questions)")
    ax.set_title("Cache judge signals, held-out half of the in-domain set")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.cache_judge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="only the first N questions of the set")
    p.add_argument("--judge", choices=("on", "off"), default="on", help="score with the chat model (default on)")
    p.add_argument("--reuse", action="store_true", help=f"the judge's scores from {PAIRS_OUT.name} (same prompt)")
    p.add_argument("--fit", action="store_true", help="write the combined judge to pipelines/query/cache/judge.json")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads for the judge (default 2)")
    p.add_argument("--max-near-miss", type=float, default=0.02,
                   help="share of near-misses a threshold may let through (default 0.02)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not 0.0 <= args.max_near_miss < 1.0:
        p.error("--max-near-miss must be within [0, 1)")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    if args.fit and (args.judge == "off" or args.limit is not None):
        p.error("--fit needs the judge and the whole set")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from pipelines.query.cache.judge import prompt_sha256

    pairs = load_pairs(DATA, args.limit) + load_neighbours(NEIGHBOURS, args.limit)
    kinds = np.array([q.kind for q in pairs])
    model_name, model_path = judge_model()
    reuse = None
    if args.reuse:
        rows = [json.loads(line) for line in PAIRS_OUT.read_text().splitlines()]
        if any(r["prompt_sha256"] != prompt_sha256() or r["judge_model"] != model_name for r in rows):
            p.error(f"{PAIRS_OUT} was scored with another prompt or model: run without --reuse")
        reuse = {(r["question"], r["other"]): r["judge"] for r in rows}
    judge = Judge(model_path, args.threads) if args.judge == "on" and reuse is None else None
    scores, meta = score_all(pairs, judge, reuse)
    same = labels(pairs)
    # a --limit run (a smoke test) reports on all its pairs: too few for two halves
    tune = np.array([in_tune(q.question) for q in pairs]) if args.limit is None else np.zeros(len(pairs), bool)
    test = ~tune
    result: dict = {"meta": {**meta, "pairs": len(pairs), "rewordings": int((kinds == "rewording").sum()),
                             "near_misses": int((kinds == "near-miss").sum()),
                             "neighbours": int((kinds == "neighbour").sum()),
                             "neighbours_same": int(((kinds == "neighbour") & same).sum()), "tune_pairs": int(tune.sum()),
                             "test_pairs": int(test.sum()), "judge_model": model_name if "judge" in scores else None,
                             "judge_model_file": model_path.name if "judge" in scores else None,
                             "prompt_sha256": prompt_sha256(), "max_near_miss": args.max_near_miss,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                    "cosine_floors": {str(f): {"right": round(float((scores["cosine"][same] >= f).mean()), 3),
                                               "wrong": round(float((scores["cosine"][~same] >= f).mean()), 3)}
                                      for f in FLOORS}}
    if "judge" in scores and args.limit is None:
        prob, coef, intercept, honest = combine(scores, same, kinds, tune, args.max_near_miss)
        scores["combined"] = prob
        result["combined"] = {"coef": dict(zip(("judge", "verifier", "sources", "cosine"), map(float, coef))),
                              "intercept": intercept, **honest}
        if args.fit:
            bands = prior_bands(prob[tune], same[tune])
            result["combined"]["prior"] = {"pairs": bands[0], "wrong": bands[1]}
            written = write_artifact(coef, intercept, model_name, *bands,
                                     {"judge_model_file": model_path.name, "l2": L2,
                                      "held_out": {k: v for k, v in honest.items() if k.startswith("test_")}})
            log.info("wrote %s", written)
        PAIRS_OUT.parent.mkdir(parents=True, exist_ok=True)
        PAIRS_OUT.write_text("".join(json.dumps({"question": q.question, "other": q.other, "same": q.same, "kind": q.kind,
                                                 "tune": bool(t), "judge": float(s), "judge_model": model_name,
                                                 "prompt_sha256": prompt_sha256()}) + "\n"
                                     for q, t, s in zip(pairs, tune, scores["judge"], strict=True)))
    result["held_out"] = report(same[test], {k: v[test] for k, v in scores.items()}, args.max_near_miss)
    if args.limit is None:
        plot(scores, same, test, PLOT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"| signal (held-out half) | AUC | right pairs passed at <= {args.max_near_miss:.0%} of wrong ones "
             "(threshold on these pairs) | median right / wrong |", "|---|---|---|---|"]
    for name, r in result["held_out"].items():
        lines.append(f"| {name} | {r['auc']:.3f} | {r['right_passed']:.1%} ({r['wrong_passed']:.1%}) | "
                     f"{r['median_right']:.2f} / {r['median_wrong']:.2f} |")
    if "combined" in result:
        c = result["combined"]
        lines.append(f"\ncombined, threshold {c['threshold_from_tune']:.3f} chosen on the tune half, on the held-out half:")
        for name in ("rewordings", "near_misses", "neighbours_different", "neighbours_same", "all_wrong"):
            g = c[f"test_{name}_passed"]
            lines.append(f"- {name.replace('_', ' ')} passed: {g['share']:.1%} ({g['count'][0]} of {g['count'][1]}; "
                         f"95% CI {g['ci95'][0]:.1%}-{g['ci95'][1]:.1%})")
    log.info("%d pairs (%d held out)%s\n%s", len(pairs), int(test.sum()),
             f"; judge {meta['judge_ms_per_pair']} ms a pair" if "judge_ms_per_pair" in meta else "",
             "\n".join(lines))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
