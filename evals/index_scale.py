"""FAISS index types at scale: build time, memory, and single-core query latency at a recall target.

    python -m evals.index_scale                            # 1M x 384: ~15 min on 2 cores
    python -m evals.index_scale --sizes 100000 --runs 3    # quicker
    python -m evals.index_scale --shape mixture            # clustered, like a real corpus

**Vectors.** Synthetic, shaped like real embeddings of a real MiniLM index (``--fit``: the SciFact
eval index when evals/retrieval.py has built it, else the demo index), sampled with a fixed seed
and L2-normalized, in one of two shapes (``--shape``):

- ``gaussian`` (default): one Gaussian with the real vectors' mean and covariance (a small
  isotropic floor keeps it full-rank). It has no cluster structure, so it is a harder case for
  the approximate indexes than real corpora, whose neighbours cluster by topic.
- ``mixture``: a Gaussian mixture fitted to them: 200 spherical k-means centres, each drawn in
  proportion to its cluster's size, with its members' per-dimension spread (diagonal) scaled so
  that, at the real index's size, a point's 10th nearest neighbour is as near (mean cosine) as
  among the real vectors (0.55 on SciFact; the Gaussian's is 0.41).

Queries are 1000 further samples from the same distribution (none of them in the database).
Before the big sizes, each approximate type is built over the real vectors and over as many
synthetic ones, and the search parameter reaching the recall target is reported for both
(``difficulty_at_real_size``): where they agree, the synthetic shape is a fair stand-in for that
type; on SciFact the mixture matches the real vectors for HNSW (efSearch 16 both) but is far
easier for IVF (nprobe 2 against 16), and the Gaussian is harder for both (64).

**Method.** Ground truth is exact inner-product search (IndexFlatIP). For each index type the
search parameter (HNSW efSearch, IVF nprobe) is raised until recall@10 against the exact top 10,
over all queries, reaches ``--recall`` (0.95); the table reports that operating point (or the
sweep's last value, flagged by its recall, when none reaches it). Latency: one query at a
time on one thread (``faiss.omp_set_num_threads(1)``), p50 and p95 over the queries (exact
search: the first 100), median over ``--runs`` passes. Build time uses every core, measured once per size (a build is the expensive
part of the run). Memory: the serialized index size (what the service holds in RAM).

The index types are those ``ragroute index build --index-type`` offers (index/store.py); the
defaults by size docs/results.md states come from this table. Writes evals/out/index_scale.json.
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


def mixture_sampler(real: np.ndarray, seed: int, components: int = 200, scale: float = 1.0):
    """Draw rows from a Gaussian mixture fitted to ``real``: k-means centres (``components``), each
    with its cluster's share of the rows and the per-dimension variance of its members around it
    (diagonal), L2-normalized. Neighbours then cluster by topic as in a real corpus."""
    dim = real.shape[1]
    km = faiss.Kmeans(dim, components, niter=25, seed=seed, spherical=True)
    km.train(np.ascontiguousarray(real, dtype=np.float32))
    _, assign = km.index.search(real.astype(np.float32), 1)
    assign = assign[:, 0]
    weights = np.bincount(assign, minlength=components).astype(np.float64)
    spread = np.stack([real[assign == c].std(axis=0) if weights[c] > 1 else real.std(axis=0)
                       for c in range(components)]).astype(np.float32)
    centres = km.centroids.astype(np.float32)
    rng = np.random.default_rng(seed)
    weights /= weights.sum()

    def draw(n: int, batch: int = 100_000) -> np.ndarray:
        out = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, batch):
            m = min(batch, n - start)
            which = rng.choice(components, size=m, p=weights)
            rows = centres[which] + rng.standard_normal((m, dim), dtype=np.float32) * spread[which] * scale
            out[start:start + m] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return out

    return draw


def tenth_neighbour(vectors: np.ndarray, queries: int = 1000) -> float:
    """Mean cosine of each of the first ``queries`` rows with its 10th nearest among the others."""
    sims = vectors[:queries] @ vectors[queries:].T
    return float(np.mean(np.sort(sims, axis=1)[:, -K]))


def calibrated_mixture(real: np.ndarray, seed: int):
    """:func:`mixture_sampler` with its spread scaled (bisection) until, at the real index's size,
    the mean cosine of a point's 10th nearest neighbour is the real vectors' own."""
    rng = np.random.default_rng(seed)
    target = tenth_neighbour(real[rng.permutation(len(real))])
    lo, hi = 0.5, 3.0
    for _ in range(8):
        mid = (lo + hi) / 2
        got = tenth_neighbour(mixture_sampler(real, seed, scale=mid)(len(real)))
        lo, hi = (mid, hi) if got > target else (lo, mid)
    scale = (lo + hi) / 2
    log.info("mixture spread x%.3f: 10th-neighbour cosine %.3f (real vectors: %.3f)", scale,
             tenth_neighbour(mixture_sampler(real, seed, scale=scale)(len(real))), target)
    return mixture_sampler(real, seed, scale=scale), scale, target


def difficulty(real: np.ndarray, draw, kinds: list[str], target: float) -> dict[str, dict[str, int | None]]:
    """How hard each approximate index type finds the real vectors and the synthetic ones at the
    real index's size: the search parameter that reaches ``target`` recall@10 (1000 queries held
    out of each set). A synthetic shape is a fair stand-in for a type when the two agree."""
    perm = np.random.default_rng(7).permutation(len(real))
    fake = draw(len(real))
    out: dict[str, dict[str, int | None]] = {}
    for name, rows in (("real", real[perm]), ("synthetic", fake)):
        queries, db = rows[:QUERIES], np.ascontiguousarray(rows[QUERIES:])
        exact = faiss.IndexFlatIP(db.shape[1])
        exact.add(db)
        _, truth = exact.search(queries, K)
        out[name] = {}
        for kind in kinds:
            if kind not in SWEEPS:
                continue
            index, reached = build_faiss(db, kind), None
            for value in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256):
                set_search_param(index, kind, value)
                if recall(index.search(queries, K)[1], truth) >= target:
                    reached = value
                    break
            out[name][kind] = reached
    return out


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
    parser.add_argument("--shape", choices=("gaussian", "mixture"), default="gaussian",
                        help="gaussian: one Gaussian with the real vectors' covariance (no clusters: the hard case); "
                             "mixture: a 200-component Gaussian mixture fitted to them (clusters like a real corpus)")
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
    log.info("synthetic vectors (%s) shaped like %d real ones from %s", args.shape, len(real), source)
    calibration = {}
    if args.shape == "gaussian":
        draw = sampler(real, seed=0)
    else:
        draw, scale, target = calibrated_mixture(real, seed=0)
        calibration = {"spread_scale": round(scale, 3), "tenth_neighbour_cosine_real": round(target, 3)}
    check = difficulty(real, draw, kinds, args.recall)
    log.info("search parameter for recall@10 >= %.2f at the real index's size (%d vectors): real %s, %s %s",
             args.recall, len(real), check["real"], args.shape, check["synthetic"])
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
    args.out.write_text(json.dumps({"dimension": int(real.shape[1]), "fit": str(source), "shape": args.shape,
                                    **calibration, "difficulty_at_real_size": check,
                                    "queries": QUERIES,
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
