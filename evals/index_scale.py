"""FAISS index types at scale: build time, memory, and single-core query latency at a recall target.

    python -m evals.index_scale                            # 1M x 384: ~15 min on 2 cores
    python -m evals.index_scale --sizes 100000 --runs 3    # quicker

**Vectors.** Synthetic, shaped like real embeddings: a Gaussian with the mean and covariance of a
real MiniLM index (``--fit``: the SciFact eval index when evals/retrieval.py has built it, else
the demo index; a small isotropic floor keeps the covariance full-rank), sampled with a fixed
seed and L2-normalized. Queries are 1000 further samples from the same distribution (none of
them in the database). A Gaussian has no cluster structure, so it is a harder case for the
approximate indexes than real corpora, whose neighbours cluster by topic.

**Method.** Ground truth is exact inner-product search (IndexFlatIP). For each index type the
search parameter (HNSW efSearch, IVF nprobe) is raised until recall@10 against the exact top 10,
over all queries, reaches ``--recall`` (0.95); the table reports that operating point (or the
sweep's last value, flagged by its recall, when none reaches it). Latency: one query at a
time on one thread (``faiss.omp_set_num_threads(1)``), p50 and p95 over the queries (exact
search: the first 100), median over ``--runs`` passes. Build time uses every core, measured once per size (a build is the expensive
part of the run). Memory: the serialized index size (what the service holds in RAM).

The index types are those ``ragroute index build --index-type`` offers (index/store.py); the
defaults by size the README states come from this table. Writes evals/out/index_scale.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import faiss
import numpy as np

from evals.serving import ROOT
from index.store import INDEX_SPECS, build_faiss, set_search_param
from pipelines.config import home

log = logging.getLogger("evals.index_scale")

QUERIES = 1000
FLAT_QUERIES = 100
K = 10
SWEEPS = {"hnsw": (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512),
          "ivf": (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256),
          "ivf-sq8": (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)}


def fit_source(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    evals_dir = home() / "evals" / "retrieval"
    found = sorted(evals_dir.glob("scifact-*/index.faiss")) if evals_dir.is_dir() else []
    if found:
        return found[0].parent
    return home() / "indexes" / "demo"


def real_vectors(directory: Path) -> np.ndarray:
    index = faiss.read_index(str(directory / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


def sampler(real: np.ndarray, seed: int):
    """Draw rows from N(mean, cov) of ``real`` (plus a 1% isotropic floor), L2-normalized."""
    mean = real.mean(axis=0)
    cov = np.cov(real, rowvar=False)
    cov += np.eye(cov.shape[0]) * 0.01 * np.trace(cov) / cov.shape[0]
    factor = np.linalg.cholesky(cov).astype(np.float32)
    rng = np.random.default_rng(seed)

    def draw(n: int, batch: int = 100_000) -> np.ndarray:
        out = np.empty((n, real.shape[1]), dtype=np.float32)
        for start in range(0, n, batch):
            z = rng.standard_normal((min(batch, n - start), real.shape[1]), dtype=np.float32)
            rows = z @ factor.T + mean.astype(np.float32)
            out[start:start + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return out

    return draw


def timed_search(index: faiss.Index, queries: np.ndarray) -> tuple[list[float], np.ndarray]:
    times, found = [], np.empty((len(queries), K), dtype=np.int64)
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        _, rows = index.search(q[None, :], K)
        times.append((time.perf_counter() - t0) * 1000)
        found[i] = rows[0]
    return times, found


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def measure(kind: str, index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float,
            runs: int) -> dict:
    """The cheapest search parameter reaching ``target`` recall@10 over all queries, and its latency.
    Exact search is timed on the first ``FLAT_QUERIES`` queries (each one scans every vector)."""
    chosen, found = None, None
    sweep = SWEEPS.get(kind, (None,))
    if kind == "flat":
        queries, truth = queries[:FLAT_QUERIES], truth[:FLAT_QUERIES]
    for value in sweep:
        if value is not None:
            set_search_param(index, kind, value)
        _, found = timed_search(index, queries)
        chosen = value
        if recall(found, truth) >= target:
            break
    passes = [timed_search(index, queries) for _ in range(runs)]
    return {
        "search_param": chosen,
        "recall@10": recall(passes[0][1], truth),
        "p50_ms": statistics.median(float(np.percentile(t, 50)) for t, _ in passes),
        "p95_ms": statistics.median(float(np.percentile(t, 95)) for t, _ in passes),
        "timed_queries": len(queries),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated vector counts")
    parser.add_argument("--types", default=",".join(INDEX_SPECS), help=f"comma-separated, of {', '.join(INDEX_SPECS)}")
    parser.add_argument("--recall", type=float, default=0.95, help="recall@10 target vs exact search")
    parser.add_argument("--runs", type=int, default=3, help="timed query passes; latencies are medians over them")
    parser.add_argument("--fit", type=Path, default=None, help="index directory whose vectors shape the synthetic ones")
    parser.add_argument("--out", type=Path, default=ROOT / "evals" / "out" / "index_scale.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.types.split(",")
    unknown = set(kinds) - set(INDEX_SPECS)
    if unknown:
        raise SystemExit(f"--types: {', '.join(sorted(unknown))} not offered; choose from {', '.join(INDEX_SPECS)}")

    source = fit_source(args.fit)
    real = real_vectors(source)
    log.info("synthetic vectors shaped like %d real ones from %s", len(real), source)
    draw = sampler(real, seed=0)
    queries = draw(QUERIES)
    database = draw(max(sizes))
    results = []
    for n in sorted(sizes):
        vectors = database[:n]
        threads = faiss.omp_get_max_threads()
        exact = faiss.IndexFlatIP(vectors.shape[1])
        exact.add(vectors)
        _, truth = exact.search(queries, K)
        for kind in kinds:
            faiss.omp_set_num_threads(threads)
            t0 = time.perf_counter()
            index = build_faiss(vectors, kind)
            build_s = time.perf_counter() - t0
            memory = len(faiss.serialize_index(index))
            faiss.omp_set_num_threads(1)
            row = {"n": n, "type": kind, "build_s": round(build_s, 1), "memory_mb": round(memory / 2**20, 1),
                   **measure(kind, index, queries, truth, args.recall, args.runs)}
            faiss.omp_set_num_threads(threads)
            log.info("%s", row)
            results.append(row)
            del index
        del exact
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dimension": int(real.shape[1]), "fit": str(source), "queries": QUERIES,
                                    "recall_target": args.recall, "runs": args.runs, "results": results},
                                   indent=2) + "\n")
    lines = ["| vectors | type | build s (all cores) | memory MB | search param | recall@10 | p50 ms | p95 ms |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n']:,} | {r['type']} | {r['build_s']} | {r['memory_mb']} | {r['search_param']} | "
              f"{r['recall@10']:.3f} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} |" for r in results]
    log.info("wrote %s\n%s", args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
