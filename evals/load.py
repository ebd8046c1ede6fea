"""Load test: N concurrent clients for T seconds against `bentoml serve` (loopback only).

    python -m evals.load                               # start a server, 32 clients, 60 s
    python -m evals.load --clients 64 --duration 120 --miss-ratio 0.1
    python -m evals.load --url http://127.0.0.1:3000   # an already running ragroute

The mix: ``--miss-ratio`` of requests are cache misses (``cache: bypass``: the whole
pipeline, generation included); the rest are exact or semantic hits on a warmed set of
questions (each a real call through the RAG service; semantic hits also call the Embedding
service). Bounded: it stops after ``--duration`` seconds or ``--max-requests``. Reports
throughput, p50/p95/p99 latency overall and per kind, errors (any non-200), degraded
answers, and a sample of /metrics. Writes evals/out/load.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from evals.latency import QUESTIONS, pct
from evals.serving import ROOT, serving
from pipelines import config

log = logging.getLogger("evals.load")


def run_load(url: str, clients: int, duration_s: float, miss_ratio: float, max_requests: int, seed: int) -> dict:
    with httpx.Client(timeout=120) as c:  # warm the cache: every question answered once
        for q, _ in QUESTIONS:
            c.post(f"{url}/rag_query", json={"query": q}).raise_for_status()
    samples: list[dict] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s
    count = [0]

    def client(i: int) -> None:
        rng = random.Random(seed + i)
        with httpx.Client(timeout=120) as c:
            while time.monotonic() < deadline:
                with lock:
                    if count[0] >= max_requests:
                        return
                    count[0] += 1
                q, para = rng.choice(QUESTIONS)
                r = rng.random()
                if r < miss_ratio:
                    kind, body = "miss", {"query": q, "cache": "bypass"}
                elif r < miss_ratio + (1 - miss_ratio) / 2:
                    kind, body = "exact", {"query": q}
                else:
                    kind, body = "semantic", {"query": para}
                t0 = time.perf_counter()
                try:
                    resp = c.post(f"{url}/rag_query", json=body)
                    status, out = resp.status_code, (resp.json() if resp.status_code == 200 else resp.text[:300])
                except httpx.HTTPError as exc:
                    status, out = 0, f"{type(exc).__name__}: {exc}"
                ms = (time.perf_counter() - t0) * 1000
                row = {"kind": kind, "ms": ms, "status": status}
                if status == 200:
                    row["degraded"] = out["degraded"]
                    row["got"] = out["cache"]["kind"] or "miss"
                else:
                    row["error"] = out
                with lock:
                    samples.append(row)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.monotonic() - started
    by_kind: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        by_kind[s["kind"]].append(s["ms"])
    all_ms = [s["ms"] for s in samples]
    summary = {
        "clients": clients, "duration_s": round(elapsed, 1), "requests": len(samples),
        "throughput_rps": round(len(samples) / elapsed, 1),
        "errors": sum(s["status"] != 200 for s in samples),
        "degraded": sum(bool(s.get("degraded")) for s in samples),
        "p50_ms": round(pct(all_ms, 0.5), 1), "p95_ms": round(pct(all_ms, 0.95), 1), "p99_ms": round(pct(all_ms, 0.99), 1),
        "by_kind": {k: {"n": len(v), "p50_ms": round(pct(v, 0.5), 1), "p95_ms": round(pct(v, 0.95), 1),
                        "p99_ms": round(pct(v, 0.99), 1)} for k, v in sorted(by_kind.items())},
        "first_errors": [s["error"] for s in samples if s["status"] != 200][:5],
    }
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    summary["metrics_sample"] = [line for line in metrics.splitlines()
                                 if line.startswith(("ragroute_requests_total", "ragroute_cache_hits_total",
                                                     "ragroute_stage_outcomes_total", "ragroute_budget_overruns",
                                                     "ragroute_stage_latency_seconds_bucket{le=\"0.25\",stage=\"embed",
                                                     "ragroute_stage_latency_seconds_bucket{le=\"0.5\",stage=\"embed",
                                                     "ragroute_stage_latency_seconds_bucket{le=\"1.0\",stage=\"embed",
                                                     "ragroute_stage_latency_seconds_count{stage=\"embed"))][:60]
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an already running ragroute (default: start one on the embedded defaults)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--miss-ratio", type=float, default=0.05, help="share of requests that run the full pipeline")
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the server this script starts (repeatable)")
    p.add_argument("--out", type=Path, default=ROOT / "evals" / "out" / "load.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not 1 <= args.clients <= 1024 or not 0 < args.duration <= 3600:
        raise SystemExit("--clients must be 1..1024 and --duration 0..3600 s")
    kwargs = dict(clients=args.clients, duration_s=args.duration, miss_ratio=args.miss_ratio,
                  max_requests=args.max_requests, seed=args.seed)
    if args.url:
        summary = run_load(args.url, **kwargs)
    else:
        env = {"RAGROUTE_MODEL_CACHE": str(config.model_cache()), **dict(e.split("=", 1) for e in args.env)}
        with tempfile.TemporaryDirectory(prefix="ragroute-load-") as tmp, serving(Path(tmp), env) as server:
            summary = run_load(server.url, **kwargs)
        summary["server_env"] = dict(e.split("=", 1) for e in args.env)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("%d clients, %.0f s: %d requests, %.1f req/s, p50 %.1f / p95 %.1f / p99 %.1f ms, %d errors, %d degraded",
             summary["clients"], summary["duration_s"], summary["requests"], summary["throughput_rps"],
             summary["p50_ms"], summary["p95_ms"], summary["p99_ms"], summary["errors"], summary["degraded"])
    for kind, k in summary["by_kind"].items():
        log.info("  %-8s n=%-5d p50 %8.1f  p95 %8.1f  p99 %8.1f ms", kind, k["n"], k["p50_ms"], k["p95_ms"], k["p99_ms"])
    log.info("wrote %s", args.out)
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
