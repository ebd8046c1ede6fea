"""rag_query latency through `bentoml serve`: cache miss vs exact hit vs semantic hit.

    python -m evals.latency                 # start a server on the embedded defaults, 3 runs
    python -m evals.latency --url http://127.0.0.1:3000 --runs 5
    python -m evals.latency --redis         # the same with the Redis cache (a local Redis 8 is started)

For every question and run: a miss (``cache: bypass`` = the full pipeline), an exact hit
(the same question again, after one normal ask stored it), a semantic hit (a near-identical
paraphrase, accepted on the cosine alone) and a reworded paraphrase (cosine 0.80-0.95, where
the hit verifier's learned check and pair model run): ``reworded_hit`` when the verifier
accepts it, ``reworded_miss`` (then the full pipeline) when it does not. Each run asks as its
own tenant, so every run starts from an empty cache partition. Reports client-side and
server-side (timings_ms.total, and timings_ms.cache: the lookup with the verifier) p50/p95 per
kind, the median of the per-run p50s, per-stage medians for misses, and the resident memory
of each `bentoml serve` process after the runs. Writes evals/out/latency.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

from evals.redis_server import RedisServer
from evals.serving import ROOT, service_processes, serving
from pipelines import config

log = logging.getLogger("evals.latency")

# (question, near-identical paraphrase, reworded paraphrase) over the demo corpus (Python help
# topics). The reworded ones sit between the verifier's floor (0.80) and its near-identical cut
# (0.95) with all-MiniLM-L6-v2, so the learned check and the pair model run for them.
QUESTIONS = [
    ("What does the with statement do?", "What does the with statement do exactly?",
     "What is the purpose of the with statement?"),
    ("How do I catch an exception?", "How can I catch an exception?", "How do I catch exceptions?"),
    ("What does the yield statement do?", "What exactly does the yield statement do?", "What does yield do?"),
    ("What is a lambda expression?", "What is a lambda expression exactly?", "Explain lambda expressions."),
    ("What does the nonlocal statement do?", "What does the nonlocal statement actually do?",
     "What does nonlocal do?"),
    ("How does the for loop work?", "How does the for loop work exactly?", "How do for loops work?"),
    ("What does the assert statement do?", "What does the assert statement do exactly?",
     "What does the assert keyword do?"),
    ("What are f-strings?", "What are f-strings exactly?", "What is an f-string?"),
]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ask(client: httpx.Client, url: str, body: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = client.post(f"{url}/rag_query", json=body, timeout=300)
    elapsed = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    return elapsed, r.json()


def service_rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of each process under `bentoml serve` (pid), by BentoML service name."""
    import psutil

    out: dict[str, float] = defaultdict(float)
    for name, proc in service_processes(pid):
        try:
            out[name or "(serve: arbiter)"] += proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return {k: round(v, 1) for k, v in sorted(out.items())}


def measure(url: str, runs: int) -> dict:
    samples: dict[str, list[dict]] = defaultdict(list)
    with httpx.Client() as client:
        for run in range(runs):
            tenant = f"bench-{os.getpid()}-{run}"  # a fresh cache partition per run
            for q, para, reworded in QUESTIONS:
                ms, out = ask(client, url, {"query": q, "cache": "bypass", "tenant": tenant})
                samples["miss"].append({"run": run, "client_ms": ms, "server": out["timings_ms"],
                                        "tier": out["route"]["tier"], "degraded": out["degraded"]})
                ask(client, url, {"query": q, "tenant": tenant})  # stores the answer (when it is cacheable)
                for kind, text in (("exact", q), ("semantic", para)):
                    ms, out = ask(client, url, {"query": text, "tenant": tenant})
                    got = out["cache"]["kind"]
                    samples[kind if got == kind else f"{kind}_expected_but_{got}"].append(
                        {"run": run, "client_ms": ms, "server": out["timings_ms"]})
                ms, out = ask(client, url, {"query": reworded, "tenant": tenant})
                kind = "reworded_hit" if out["cache"]["kind"] == "semantic" else "reworded_miss"
                samples[kind].append({"run": run, "client_ms": ms, "server": out["timings_ms"],
                                      "similarity": out["cache"]["similarity"], "verifier": out["cache"]["verifier"]})
            log.info("run %d/%d done", run + 1, runs)
    summary = {}
    for kind, rows in samples.items():
        client_ms = [r["client_ms"] for r in rows]
        server_ms = [r["server"]["total"] for r in rows]
        per_run_p50 = [statistics.median([r["client_ms"] for r in rows if r["run"] == i])
                       for i in range(runs) if any(r["run"] == i for r in rows)]
        cache_ms = [r["server"]["cache"] for r in rows if "cache" in r["server"]]
        summary[kind] = {
            "n": len(rows),
            "client_p50_ms": round(pct(client_ms, 0.5), 2),
            "client_p95_ms": round(pct(client_ms, 0.95), 2),
            "server_p50_ms": round(pct(server_ms, 0.5), 2),
            "server_cache_p50_ms": round(pct(cache_ms, 0.5), 2),
            "server_cache_p95_ms": round(pct(cache_ms, 0.95), 2),
            "median_of_run_p50s_ms": round(statistics.median(per_run_p50), 2),
            "run_p50s_ms": [round(x, 2) for x in per_run_p50],
        }
    misses = samples["miss"]
    summary["miss"]["stage_p50_ms"] = {
        stage: round(statistics.median(r["server"][stage] for r in misses if stage in r["server"]), 2)
        for stage in ("embed", "retrieve", "rerank", "route", "generate")
    }
    summary["miss"]["tiers"] = {t: sum(r["tier"] == t for r in misses) for t in ("small", "large")}
    summary["miss"]["degraded"] = sum(r["degraded"] for r in misses)
    return {"summary": summary, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an already running ragroute (default: start one on the embedded defaults)")
    p.add_argument("--runs", type=int, default=3, help="repetitions over the question set")
    p.add_argument("--redis", action="store_true", help="serve with REDIS_URL set to a Redis started for the run")
    p.add_argument("--out", type=Path, default=None, help="default: evals/out/latency[-redis].json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    args.out = args.out or ROOT / "evals" / "out" / ("latency-redis.json" if args.redis else "latency.json")
    meta = {"runs": args.runs, "cache_backend": "redis" if args.redis else "memory", "questions": len(QUESTIONS), "machine": platform.machine(),
            "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.url:
        result = measure(args.url, args.runs)
    else:
        # A fresh home (demo index built on start); the model cache is the real one.
        # the verifier's fixed cut: semantic hits from the first paraphrase (the default error-bounded
        # policy serves them only after hundreds of observations; evals/cache_policy.py measures it)
        env = {"RAGROUTE_MODEL_CACHE": str(config.model_cache()), "RAGROUTE_CACHE_POLICY": "verifier"}
        with tempfile.TemporaryDirectory(prefix="ragroute-bench-") as tmp:
            redis = RedisServer(Path(tmp) / "redis").start() if args.redis else None
            if redis:
                env["REDIS_URL"] = redis.url
            try:
                with serving(Path(tmp), env) as server:
                    meta["ready_s"] = round(server.ready_s, 1)
                    result = measure(server.url, args.runs)
                    result["rss_mb"] = service_rss_mb(server.proc.pid)
            finally:
                if redis:
                    redis.stop()
    result["meta"] = meta
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for kind, s in result["summary"].items():
        log.info("%-14s n=%-3d client p50 %8.1f ms  p95 %8.1f ms  (median of run p50s %8.1f; server p50 %8.1f, "
                 "cache lookup p50 %6.1f / p95 %6.1f)", kind, s["n"], s["client_p50_ms"], s["client_p95_ms"],
                 s["median_of_run_p50s_ms"], s["server_p50_ms"], s["server_cache_p50_ms"], s["server_cache_p95_ms"])
    if "rss_mb" in result:
        log.info("resident memory after the runs (MB): %s", result["rss_mb"])
    log.info("miss stage p50s: %s; tiers %s", result["summary"]["miss"]["stage_p50_ms"], result["summary"]["miss"]["tiers"])
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
