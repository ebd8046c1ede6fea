"""Retrieval quality and latency on a BEIR-layout folder: dense, BM25, fused and reranked.

    python -m evals.retrieval                         # SciFact: ~6 min on 2 cores (+~4 min first index)
    python -m evals.retrieval --data DIR --runs 3     # any BEIR folder: corpus.jsonl, queries.jsonl, qrels/*.tsv
    python -m evals.retrieval --data ../shared/data/qa/squad-dev-subset --tune-split half   # one split only

The corpus is indexed by the project's own path (pipelines/indexing/build.py: chunk, embed with
the packaged MiniLM, FAISS flat) into RAGROUTE_HOME/evals/retrieval/ and reused while the corpus
and the build parameters are unchanged. Every method ranks chunks; a document takes the rank of
its best chunk. Methods:

- ``dense``: FAISS inner product of the query embedding (index/store.py).
- ``bm25``: bm25s over stemmed chunk text (index/lexical.py).
- ``rrf`` / ``score``: the two lists fused (index/fusion.py), each ``--depth`` chunks deep.
- ``+ near-duplicate filter``: the shipped rerank stage (``RAGROUTE_RERANKER=fusion``): the
  fused order, minus passages that repeat a better-ranked one (pipelines/query/rerank.py).
- ``+ hybrid rerank``: the hybrid reorderer (``RAGROUTE_RERANKER=hybrid``) over the top
  ``--candidates`` chunks; the rest keep their retrieval order (for recall@100).

Every free parameter (RRF k, the score-fusion weight, the reranker's dense weight) is chosen on
``--tune-split`` (train) by nDCG@10 and reported on ``--split`` (test) once. A set with one
split only (the SQuAD subset) takes ``--tune-split half``: its queries are halved by a hash of
their id, tuned on one half and reported on the other. Metrics via
ir-measures (trec_eval): nDCG@10, recall@100, MRR@10. Latency per stage in ms, p50 and p95 over
the split's queries, medians over ``--runs`` passes (one query at a time, as the service embeds
and searches it, FAISS on RAGROUTE_FAISS_THREADS threads as in the Retrieval service).

Writes evals/out/retrieval-<data>.json and logs a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from common.records import ScoredChunk
from common.text import content_id
from evals.cache_verifier import default_data
from evals.serving import ROOT
from index.fusion import fuse
from index.store import IndexStore
from pipelines.config import EmbeddingConfig, RetrievalConfig, home
from pipelines.indexing.build import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, build_index
from pipelines.indexing.load import load_beir
from pipelines.models import sha256_file
from pipelines.query.embed import SentenceTransformerEmbedder
from pipelines.query.rerank import HybridReranker, distinct

log = logging.getLogger("evals.retrieval")

MEASURES = [nDCG @ 10, R @ 100, RR @ 10]
DOCS = 100  # documents per query in a run (recall@100)
RRF_KS = (5, 10, 20, 40, 60, 100)
WEIGHTS = tuple(round(float(w), 2) for w in np.arange(0.0, 1.0001, 0.05))

Ranking = list[tuple[int, float]]  # (chunk row, score) best first


def halves(judged: tuple[dict, dict]) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """One split's queries in two halves (tune, report) by a hash of their id: stable across runs."""
    queries, qrels = judged
    tune = {q for q in queries if int(content_id(q)[:8], 16) % 2 == 0}
    pick = lambda keep: ({q: t for q, t in queries.items() if keep(q)}, {q: r for q, r in qrels.items() if keep(q)})  # noqa: E731
    return pick(lambda q: q in tune), pick(lambda q: q not in tune)


def read_beir(data: Path, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Queries of ``split`` and their relevance judgements."""
    qrels: dict[str, dict[str, int]] = {}
    path = data / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --data must be a BEIR folder with qrels/{split}.tsv")
    with path.open() as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0] == "query-id":
                continue
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries = {}
    with (data / "queries.jsonl").open() as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if str(row["_id"]) in qrels:
                    queries[str(row["_id"])] = str(row["text"])
    missing = qrels.keys() - queries.keys()
    if missing:
        raise SystemExit(f"{len(missing)} queries of qrels/{split}.tsv are not in queries.jsonl (e.g. {min(missing)})")
    return queries, qrels


def start(data: Path) -> None:
    """Log setup of a retrieval eval, and its refusal of a folder without a corpus."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    if not (data / "corpus.jsonl").is_file():
        raise SystemExit(f"{data}/corpus.jsonl not found: pass --data (a BEIR-layout folder)")


def open_index(data: Path, embedder: SentenceTransformerEmbedder, chunk_size: int, overlap: int) -> IndexStore:
    corpus = data / "corpus.jsonl"
    key = content_id(sha256_file(corpus), embedder.model_id, str(chunk_size), str(overlap))
    directory = home() / "evals" / "retrieval" / f"{data.name}-{key}"
    if not (directory / "manifest.json").is_file():
        log.info("indexing %s into %s (once; later runs reuse it)", corpus, directory)
        build_index(load_beir(corpus), directory, embedder, chunk_size=chunk_size, overlap=overlap,
                    source=str(corpus), batch_size=1024, progress=True)  # encode sorts each call by length
    return IndexStore.load(directory, embedding_model=embedder.model_id)


def to_docs(store: IndexStore, ranking: Sequence[tuple[int, float]]) -> dict[str, float]:
    """Document -> a score that orders documents by their best chunk's rank."""
    out: dict[str, float] = {}
    for rank, (row, _) in enumerate(ranking):
        doc = store.chunks[row].doc_id
        if doc not in out:
            out[doc] = float(-rank)
            if len(out) == DOCS:
                break
    return out


def evaluate(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    scores = ir_measures.calc_aggregate(MEASURES, qrels, run)
    return {"ndcg@10": scores[nDCG @ 10], "recall@100": scores[R @ 100], "mrr@10": scores[RR @ 10]}


@dataclass
class Split:
    ids: list[str]
    texts: list[str]
    qrels: dict[str, dict[str, int]]
    vectors: np.ndarray
    dense: list[Ranking]
    lexical: list[Ranking]


def load_split(store: IndexStore, embedder: SentenceTransformerEmbedder, judged: tuple[dict, dict],
               depth: int) -> Split:
    queries, qrels = judged
    ids = sorted(queries)
    texts = [queries[q] for q in ids]
    vectors = embedder.encode(texts)
    dense = [store.dense_rows(v, depth) for v in vectors]
    lexical = [store.lexical.top(t, depth) for t in texts]
    return Split(ids, texts, qrels, vectors, dense, lexical)


def rerank(store: IndexStore, reranker: HybridReranker, query: str, vector: np.ndarray, ranking: Ranking,
           candidates: int) -> Ranking:
    """The hybrid reranker over the top ``candidates`` chunks; the rest keep their order."""
    head = [r for r, _ in ranking[:candidates]]
    cosine = store.cosines(vector, head)
    scored = [ScoredChunk(chunk=store.chunks[r], score=0.0, dense_score=float(c)) for r, c in zip(head, cosine)]
    order = {store.chunks[r].id: r for r in head}
    ranked = reranker.rerank(query, scored, len(scored))
    return [(order[s.chunk.id], s.score) for s in ranked] + list(ranking[candidates:])


def near_duplicates_out(store: IndexStore, ranking: Ranking) -> Ranking:
    """The shipped rerank stage's filter over a whole ranking: a chunk that repeats a better-ranked
    one's text (pipelines/query/rerank.py: distinct) leaves it."""
    scored = [ScoredChunk(chunk=store.chunks[r], score=s, dense_score=0.0) for r, s in ranking]
    rows = {store.chunks[r].id: r for r, _ in ranking}
    return [(rows[c.chunk.id], c.score) for c in distinct(scored, len(scored))]


Method = Callable[[Split, int], Ranking]


def methods(store: IndexStore, params: dict[str, float], candidates: int) -> dict[str, Method]:
    def rr(base: Method, weight: float) -> Method:
        reranker = HybridReranker(weight)
        return lambda s, i: rerank(store, reranker, s.texts[i], s.vectors[i], base(s, i), candidates)

    dense: Method = lambda s, i: s.dense[i]  # noqa: E731
    bm25: Method = lambda s, i: s.lexical[i]  # noqa: E731
    rrf: Method = lambda s, i: fuse(s.dense[i], s.lexical[i], method="rrf", rrf_k=params["rrf_k"])  # noqa: E731
    score: Method = lambda s, i: fuse(s.dense[i], s.lexical[i], method="score", weight=params["weight"])  # noqa: E731
    return {
        "dense": dense,
        "bm25": bm25,
        "rrf": rrf,
        "score": score,
        "score + near-duplicate filter (shipped)": lambda s, i: near_duplicates_out(store, score(s, i)),
        "dense + hybrid rerank (w=0.5)": rr(dense, 0.5),
        "dense + hybrid rerank": rr(dense, params["rerank_dense"]),
        "rrf + hybrid rerank": rr(rrf, params["rerank_rrf"]),
        "score + hybrid rerank (w=0.5)": rr(score, 0.5),
        "score + hybrid rerank": rr(score, params["rerank_score"]),
    }


def run_method(store: IndexStore, split: Split, method: Method) -> dict[str, float]:
    run = {q: to_docs(store, method(split, i)) for i, q in enumerate(split.ids)}
    return evaluate(split.qrels, run)


def tune(store: IndexStore, train: Split, candidates: int) -> dict[str, float]:
    """Each free parameter by train nDCG@10; fusion first, then the reranker on top of each."""
    def ndcg(method: Method) -> float:
        return run_method(store, train, method)["ndcg@10"]

    params: dict[str, float] = {}
    params["rrf_k"] = max(RRF_KS, key=lambda k: ndcg(lambda s, i: fuse(s.dense[i], s.lexical[i], method="rrf", rrf_k=k)))
    params["weight"] = max(WEIGHTS, key=lambda w: ndcg(lambda s, i: fuse(s.dense[i], s.lexical[i], method="score", weight=w)))
    base = methods(store, {**params, "rerank_dense": 0.5, "rerank_rrf": 0.5, "rerank_score": 0.5}, candidates)
    for name, key in (("dense", "rerank_dense"), ("rrf", "rerank_rrf"), ("score", "rerank_score")):
        def with_weight(w: float, first: Method = base[name]) -> Method:
            reranker = HybridReranker(w)
            return lambda s, i: rerank(store, reranker, s.texts[i], s.vectors[i], first(s, i), candidates)
        params[key] = max(WEIGHTS[::2], key=lambda w: ndcg(with_weight(w)))
    log.info("tuned on train: %s", params)
    return params


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def latency(store: IndexStore, embedder: SentenceTransformerEmbedder, split: Split, params: dict[str, float],
            depth: int, candidates: int) -> dict[str, tuple[float, float]]:
    """One pass over the split, each stage timed per query in ms: (p50, p95)."""
    reranker = HybridReranker(params["rerank_score"])
    times: dict[str, list[float]] = {k: [] for k in ("embed", "dense", "bm25", "fuse (score)",
                                                     "near-duplicate filter", "hybrid rerank")}
    for text in split.texts:
        t0 = time.perf_counter()
        vector = embedder.encode([text])[0]
        t1 = time.perf_counter()
        dense = store.dense_rows(vector, depth)
        t2 = time.perf_counter()
        lexical = store.lexical.top(text, depth)
        t3 = time.perf_counter()
        fused = fuse(dense, lexical, method="score", weight=params["weight"])
        t4 = time.perf_counter()
        head = [ScoredChunk(chunk=store.chunks[r], score=sc, dense_score=0.0) for r, sc in fused[:candidates]]
        t5 = time.perf_counter()
        distinct(head, 4)  # as the stage runs it: the prompt's sources out of the candidates
        t6 = time.perf_counter()
        rerank(store, reranker, text, vector, fused, candidates)
        t7 = time.perf_counter()
        for key, a, b in (("embed", t0, t1), ("dense", t1, t2), ("bm25", t2, t3), ("fuse (score)", t3, t4),
                          ("near-duplicate filter", t5, t6), ("hybrid rerank", t6, t7)):
            times[key].append((b - a) * 1000)
    return {k: percentiles(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data() / "retrieval" / "scifact",
                        help="BEIR-layout folder (default: ../shared/data/retrieval/scifact, or RAGROUTE_DATA/retrieval/scifact)")
    parser.add_argument("--split", default="test", help="the split reported (qrels/<split>.tsv)")
    parser.add_argument("--tune-split", default="train",
                        help="the split free parameters are chosen on; 'half': one half of --split's queries "
                             "(the other half is reported)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    parser.add_argument("--depth", type=int, default=100, help="chunks taken from each list before fusion")
    parser.add_argument("--candidates", type=int, default=20, help="chunks the reranker reorders (RAGROUTE_CANDIDATES)")
    parser.add_argument("--runs", type=int, default=3, help="timed passes; latencies are medians over them")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    start(args.data)

    if args.tune_split == "half":  # refuse before indexing
        judged = dict(zip((args.tune_split, args.split), halves(read_beir(args.data, args.split)), strict=True))
    else:
        judged = {split: read_beir(args.data, split) for split in (args.tune_split, args.split)}

    embedder = SentenceTransformerEmbedder(EmbeddingConfig())
    store = open_index(args.data, embedder, args.chunk_size, args.overlap)
    depth = max(args.depth, args.candidates)
    train = load_split(store, embedder, judged[args.tune_split], depth)
    test = load_split(store, embedder, judged[args.split], depth)
    params = tune(store, train, args.candidates)
    quality = {name: run_method(store, test, m) for name, m in methods(store, params, args.candidates).items()}
    faiss.omp_set_num_threads(RetrievalConfig.from_env().faiss_threads)  # as the Retrieval service searches
    passes = [latency(store, embedder, test, params, depth, args.candidates) for _ in range(args.runs)]
    timing = {stage: {"p50_ms": statistics.median(p[stage][0] for p in passes),
                      "p95_ms": statistics.median(p[stage][1] for p in passes)} for stage in passes[0]}

    result = {
        "data": str(args.data), "split": args.split, "tune_split": args.tune_split, "queries": len(test.ids),
        "index": store.manifest.model_dump(exclude={"files"}), "depth": depth, "candidates": args.candidates,
        "params": params, "quality": quality, "latency": timing, "runs": args.runs,
    }
    out = args.out or ROOT / "evals" / "out" / f"retrieval-{args.data.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"{args.data.name} {args.split} ({len(test.ids)} queries; tuned on {args.tune_split}: {params})", "",
             "| method | nDCG@10 | recall@100 | MRR@10 |", "|---|---|---|---|"]
    lines += [f"| {n} | {q['ndcg@10']:.3f} | {q['recall@100']:.3f} | {q['mrr@10']:.3f} |" for n, q in quality.items()]
    lines += ["", "| stage | p50 ms | p95 ms |", "|---|---|---|"]
    lines += [f"| {s} | {t['p50_ms']:.2f} | {t['p95_ms']:.2f} |" for s, t in timing.items()]
    log.info("wrote %s\n%s", out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
