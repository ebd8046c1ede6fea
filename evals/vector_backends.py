"""FAISS flat and Milvus on the same embeddings: same top-10? how fast? same hybrid quality?

    python -m evals.vector_backends                      # SciFact; starts Milvus Lite's server (~3 min)
    python -m evals.vector_backends --milvus-uri http://milvus:19530 --runs 5

The SciFact index of evals/retrieval.py (chunks and MiniLM vectors, built once and cached) is
written as one version of a Milvus collection through the backend the service uses
(index/milvus.py: ``write_version``), then every test query is searched on both, side by side in
the same run:

- ``top10_same``: share of queries whose dense top-10 chunk set is the same on both (target >= 0.99);
  ``top10_same_order``: the same list in the same order.
- latency of one dense search (top-100, the fusion depth) and of the whole hybrid search the
  Retrieval service runs (dense + BM25 top-100 each, fused, the best 20 chunks fetched), client
  side, p50/p95 per pass, medians over ``--runs`` passes: FAISS + bm25s in-process vs Milvus over
  gRPC (what a Retrieval replica pays).
- nDCG@10 of the shipped hybrid (score fusion) on each: FAISS + bm25s vs Milvus dense + Milvus's
  own BM25 full-text search over the same stemmed terms.

Writes evals/out/vector-backends-<data>.json and logs a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import faiss

from evals.cache_verifier import default_data
from evals.retrieval import evaluate, open_index, percentiles, read_beir, to_docs
from evals.serving import ROOT
from index.fusion import fuse
from index.milvus import MilvusBackend
from pipelines.config import EmbeddingConfig, RetrievalConfig, SearchConfig
from pipelines.indexing.build import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP
from pipelines.query.embed import SentenceTransformerEmbedder

log = logging.getLogger("evals.vector_backends")

COLLECTION = "eval-scifact"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data() / "retrieval" / "scifact",
                        help="BEIR-layout folder (default: ../shared/data/retrieval/scifact)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--milvus-uri", default="", help="a Milvus to use (default: start Milvus Lite's server)")
    parser.add_argument("--depth", type=int, default=100, help="chunks per list, as the service fuses")
    parser.add_argument("--runs", type=int, default=3, help="timed passes; latencies are medians over them")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("bm25s", "httpx", "pymilvus"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not (args.data / "corpus.jsonl").is_file():
        raise SystemExit(f"{args.data}/corpus.jsonl not found: pass --data (a BEIR-layout folder)")
    queries, qrels = read_beir(args.data, args.split)

    embedder = SentenceTransformerEmbedder(EmbeddingConfig())
    store = open_index(args.data, embedder, DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP)
    if store.manifest.index_type != "flat":
        raise SystemExit(f"the reference must be FAISS flat; {store.directory} is {store.manifest.index_type}")
    faiss.omp_set_num_threads(RetrievalConfig.from_env().faiss_threads)
    vectors = store._cpu_index.reconstruct_n(0, store.manifest.vector_count)  # the same embeddings on both
    ids = sorted(queries)
    texts = [queries[q] for q in ids]
    qvecs = embedder.encode(texts)
    search = SearchConfig.from_env()

    with ExitStack() as stack:
        uri = args.milvus_uri
        if not uri:
            from evals.milvus_server import MilvusServer

            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="milvus-eval-")))
            uri = stack.enter_context(MilvusServer(workdir).start()).uri
        backend = MilvusBackend(uri, timeout_s=30.0)
        if COLLECTION in backend.versions():
            backend.drop(COLLECTION)
        backend.create(COLLECTION)
        t0 = time.perf_counter()
        manifest, version = backend.write_version(COLLECTION, store.chunks, vectors,
                                                  embedding_model=store.manifest.embedding_model,
                                                  chunk_size=store.manifest.chunk_size,
                                                  chunk_overlap=store.manifest.chunk_overlap)
        write_s = time.perf_counter() - t0
        milvus = backend.open(version, embedding_model=store.manifest.embedding_model)

        same = same_order = 0
        for v in qvecs:
            a = [r for r, _ in store.dense_rows(v, 10)]
            b = [r for r, _ in milvus.dense_rows(v, 10)]
            same += set(a) == set(b)
            same_order += a == b

        calls = {
            f"faiss dense top-{args.depth}": lambda v, t: store.dense_rows(v, args.depth),
            f"milvus dense top-{args.depth}": lambda v, t: milvus.dense_rows(v, args.depth),
            "faiss hybrid search (top-20 chunks)": lambda v, t: store.search_hybrid(
                v, t, 20, fusion=search.fusion, depth=args.depth, rrf_k=search.rrf_k, weight=search.weight),
            "milvus hybrid search (top-20 chunks)": lambda v, t: milvus.search_hybrid(
                v, t, 20, fusion=search.fusion, depth=args.depth, rrf_k=search.rrf_k, weight=search.weight),
        }
        passes = []
        for _ in range(args.runs):
            times: dict[str, list[float]] = {k: [] for k in calls}
            for v, text in zip(qvecs, texts, strict=True):
                for name, fn in calls.items():
                    t = time.perf_counter()
                    fn(v, text)
                    times[name].append((time.perf_counter() - t) * 1000)
            passes.append({k: percentiles(t) for k, t in times.items()})
        latency = {k: {"p50_ms": statistics.median(p[k][0] for p in passes),
                       "p95_ms": statistics.median(p[k][1] for p in passes)} for k in calls}

        def hybrid(dense_fn, lexical_fn) -> dict[str, float]:
            run = {}
            for qid, text, v in zip(ids, texts, qvecs, strict=True):
                fused = fuse(dense_fn(v, args.depth), lexical_fn(text, args.depth), method="score",
                             weight=search.weight)
                run[qid] = to_docs(store, fused)
            return evaluate(qrels, run)

        quality = {"faiss dense": evaluate(qrels, {q: to_docs(store, store.dense_rows(v, args.depth))
                                                  for q, v in zip(ids, qvecs, strict=True)}),
                   "milvus dense": evaluate(qrels, {q: to_docs(store, milvus.dense_rows(v, args.depth))
                                                   for q, v in zip(ids, qvecs, strict=True)}),
                   "faiss + bm25s (score fusion)": hybrid(store.dense_rows, store.lexical.top),
                   "milvus + milvus BM25 (score fusion)": hybrid(milvus.dense_rows, milvus.lexical_rows)}
        backend.drop(COLLECTION)

    result = {"data": str(args.data), "split": args.split, "queries": len(ids), "chunks": manifest.vector_count,
              "milvus_uri": args.milvus_uri or "milvus-lite server (local process)", "milvus_write_s": write_s,
              "top10_same": same / len(ids), "top10_same_order": same_order / len(ids), "depth": args.depth,
              "latency": latency, "fusion_weight": search.weight, "quality": quality, "runs": args.runs}
    out = args.out or ROOT / "evals" / "out" / f"vector-backends-{args.data.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"{args.data.name} {args.split}: {len(ids)} queries over {manifest.vector_count} chunks; "
             f"Milvus write {write_s:.1f} s", "",
             f"same dense top-10 set: {same / len(ids):.3f} (same order {same_order / len(ids):.3f})", "",
             "| one query, client side | p50 ms | p95 ms |", "|---|---|---|"]
    lines += [f"| {k} | {t['p50_ms']:.2f} | {t['p95_ms']:.2f} |" for k, t in latency.items()]
    lines += ["", "| method | nDCG@10 | recall@100 |", "|---|---|---|"]
    lines += [f"| {n} | {q['ndcg@10']:.3f} | {q['recall@100']:.3f} |" for n, q in quality.items()]
    log.info("wrote %s\n%s", out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
