"""Replicas per service for a request rate, from the measured per-stage costs (docs/deployment.md, "Scaling
past one machine").

    python -m evals.capacity --rate 20 50 200 --hit-rate 0.3
    python -m evals.capacity --rate 50 --generation-rps 6.5    # generation measured on your GPU

Reads what the benchmarks saved under evals/out/ (run them first on the machine type you deploy
on): ``hops.json`` (`make bench-hops`: cache hits per second of one entry replica at 32
connections, the Embedding service's time per question at 32 concurrent, the raw cost of
retrieve / rerank / route per call), ``latency.json`` (`make bench`: a miss's generation time) and,
if present, ``vector-backends-scifact.json`` (`make eval-backends`: a hybrid search on Milvus Lite).
A replica's capacity for a stage is what one replica served in those runs; replicas = rate the
stage sees / (capacity x ``--utilization``), rounded up. Exact cache hits stop at the entry
service; every other request is embedded (the semantic lookup needs the vector); misses go
through retrieve, rerank, route and generate.

Generation: the CPU profile's figure is llama.cpp answering one question at a time per replica
(measured). For the ``gpu`` profile pass ``--generation-rps``: answers per second one vLLM replica
sustains at its concurrency target, from `make bench-generation` on that GPU; no GPU was
available where these numbers were measured, so none is assumed.

Writes evals/out/capacity.json and logs a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from evals.serving import ROOT

log = logging.getLogger("evals.capacity")
OUT = ROOT / "evals" / "out"


MILVUS_ROW = "Milvus Lite server: hybrid searches (one process; Milvus scales by its query nodes)"


def capacities(hops: dict, latency: dict, backends: dict | None = None) -> dict[str, float]:
    """Requests per second one replica of each service handled in the measured runs."""
    embed = hops["hops"]["embed@32"]
    connections = hops["meta"]["connections"]
    summary = latency["summary"]
    milvus = {MILVUS_ROW: 1000 / backends["latency"]["milvus hybrid search (top-20 chunks)"]["p50_ms"]} if backends else {}
    return {**milvus, **{
        "ragroute (entry; exact hits)": hops["hits"]["median"]["exact"]["rps"],
        "ragroute-embedding": connections / (embed["real_caller_p50_ms"] / 1000),
        "ragroute-retrieval": 1000 / hops["raw"]["retrieve"]["p50_ms"],
        "ragroute-reranking": 1000 / hops["raw"]["rerank"]["p50_ms"],
        "ragroute-routing": 1000 / hops["raw"]["route"]["p50_ms"],
        "ragroute-generation (cpu: llama.cpp)": 1000 / summary["miss"]["stage_p50_ms"]["generate"],
    }}


def plan(rate: float, hit_rate: float, exact_share: float, caps: dict[str, float], utilization: float,
         generation_rps: float | None) -> dict[str, dict]:
    misses = rate * (1 - hit_rate)
    seen = {"ragroute (entry; exact hits)": rate, "ragroute-embedding": rate * (1 - hit_rate * exact_share),
            "ragroute-retrieval": misses, "ragroute-reranking": misses, "ragroute-routing": misses,
            "ragroute-generation (cpu: llama.cpp)": misses}
    if MILVUS_ROW in caps:
        seen[MILVUS_ROW] = misses
    if generation_rps:
        caps = {**caps, "ragroute-generation (gpu: vLLM, given)": generation_rps}
        seen["ragroute-generation (gpu: vLLM, given)"] = misses
    return {name: {"rate": seen[name], "per_replica": caps[name],
                   "replicas": max(1, math.ceil(seen[name] / (caps[name] * utilization)))} for name in seen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, nargs="+", default=[10.0, 50.0, 200.0], help="requests per second")
    parser.add_argument("--hit-rate", type=float, default=0.3, help="share of requests answered from the cache")
    parser.add_argument("--exact-share", type=float, default=0.5, help="share of those hits that are exact repeats")
    parser.add_argument("--utilization", type=float, default=0.7, help="target load per replica (headroom)")
    parser.add_argument("--generation-rps", type=float, default=None,
                        help="answers/s one GPU generation replica sustains (measure: make bench-generation)")
    parser.add_argument("--hops", type=Path, default=OUT / "hops.json")
    parser.add_argument("--latency", type=Path, default=OUT / "latency.json")
    parser.add_argument("--backends", type=Path, default=OUT / "vector-backends-scifact.json",
                        help="make eval-backends' output: adds the Retrieval service on Milvus (if present)")
    parser.add_argument("--out", type=Path, default=OUT / "capacity.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path, make in ((args.hops, "make bench-hops"), (args.latency, "make bench")):
        if not path.is_file():
            raise SystemExit(f"{path} not found: run `{make}` first (on the machine type you deploy on)")
    hops, latency = json.loads(args.hops.read_text()), json.loads(args.latency.read_text())
    backends = json.loads(args.backends.read_text()) if args.backends.is_file() else None
    caps = capacities(hops, latency, backends)
    plans = {str(r): plan(r, args.hit_rate, args.exact_share, caps, args.utilization, args.generation_rps)
             for r in args.rate}
    result = {"measured_on": {"hops": hops["meta"], "latency": latency["meta"]}, "hit_rate": args.hit_rate,
              "exact_share": args.exact_share, "utilization": args.utilization, "per_replica_rps": caps,
              "plans": plans}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    names = list(next(iter(plans.values())))
    lines = [f"hit rate {args.hit_rate:.0%} ({args.exact_share:.0%} of hits exact), replicas at "
             f"{args.utilization:.0%} load; measured on {hops['meta']['cpus']} cores", "",
             "| service | one replica, req/s | " + " | ".join(f"{r:g} req/s" for r in args.rate) + " |",
             "|---|---|" + "---|" * len(args.rate)]
    for name in names:
        first = next(iter(plans.values()))[name]
        lines.append(f"| {name} | {first['per_replica']:.1f} | "
                     + " | ".join(str(plans[str(r)][name]["replicas"]) for r in args.rate) + " |")
    log.info("wrote %s\n%s", args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
