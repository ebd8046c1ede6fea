"""Generation engines benchmark: tokens/s with 1 and 8 concurrent requests, time to first
token (from submission, so waiting for a busy engine counts), and peak RSS, for every engine available on this machine.

    python -m evals.generation_bench                       # llamacpp, openai (+ vllm if its venv exists)
    python -m evals.generation_bench --engines llamacpp --runs 5
    make bench-generation

Each engine runs in its own process (peak RSS = the largest sum of RSS over that process and
its children, sampled every 100 ms), on the same model (SmolLM2-135M-Instruct: Q4_1 GGUF for
llama.cpp and for the OpenAI-compatible llama.cpp server, the bf16 safetensors converted from
it for vLLM), the same prompt (~190 tokens: question + one source) and greedy decoding up to
128 tokens. Tokens/s = tokens generated / wall time of the round (for 8 concurrent: all
eight). Medians over --runs rounds. llama.cpp reuses the KV cache of the previous prompt's
shared prefix, so its time to first token is that of a mostly cached prompt. Writes evals/out/generation_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "evals" / "out" / "generation_bench.json"
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 128
QUESTION = ("Describe the Zorvik lighthouse in detail: who designed it, when and how it was built, how its light "
            "works, and what happened to it since.")
SOURCE = (ROOT / "tests" / "fixtures" / "corpus" / "notes" / "lighthouse.md")

log = logging.getLogger("evals.generation_bench")


class PeakRss:
    """Samples the RSS of a process tree in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _engine_env(engine: str, base_url: str) -> dict[str, str]:
    env = {"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_SMALL_ENGINE": engine, "RAGROUTE_SMALL_MODEL": MODEL,
           "RAGROUTE_SMALL_MAX_TOKENS": str(MAX_TOKENS)}
    if engine == "openai":
        env.update(RAGROUTE_SMALL_MODEL="bench", RAGROUTE_SMALL_BASE_URL=base_url, RAGROUTE_SMALL_TIMEOUT_S="300")
    return env


async def _measure(engine_name: str, runs: int, base_url: str) -> dict:
    from pipelines.config import GenerationConfig
    from pipelines.engines import ENGINES
    from pipelines.query.generate import Generator
    from common.records import Chunk, ScoredChunk, TierAnswer

    cfg = GenerationConfig.from_env({**os.environ, **_engine_env(engine_name, base_url)})
    tier = cfg.tiers["small"]
    t0 = time.perf_counter()
    engine = ENGINES[tier.engine](tier, cfg.threads)
    load_s = time.perf_counter() - t0
    gen = Generator(cfg, engines={"small": engine})
    source = [ScoredChunk(chunk=Chunk(id="l", doc_id="l", title="The Zorvik lighthouse", text=SOURCE.read_text()),
                          score=1.0, dense_score=1.0)]
    await gen.generate("small", "Hi?", source)  # warm-up

    async def one(i: int, start: float):
        """The TierAnswer record, with ttft measured from submission (queueing included)."""
        first = None
        async for item in gen.stream("small", f"{QUESTION} ({i})", source):
            if first is None and getattr(item, "text", ""):  # the first words (not the prompt's progress event)
                first = (time.perf_counter() - start) * 1000
            if isinstance(item, TierAnswer):
                return item.model_copy(update={"ttft_ms": first})

    rounds: dict[str, list[dict]] = {"1": [], "8": []}
    for concurrency in (1, 8):
        for _ in range(runs):
            start = time.perf_counter()
            outs = await asyncio.gather(*[one(i, start) for i in range(concurrency)])
            wall = time.perf_counter() - start
            tokens = sum(o.tokens_out for o in outs)
            rounds[str(concurrency)].append({
                "wall_s": round(wall, 3), "tokens_out": tokens, "tok_s": round(tokens / wall, 1),
                "ttft_ms_median": round(statistics.median(o.ttft_ms or 0 for o in outs), 1),
                "tokens_in": outs[0].tokens_in})
    await gen.close()
    med = lambda key, c: statistics.median(r[key] for r in rounds[c])  # noqa: E731
    return {"engine": engine_name, "model": engine.model, "load_s": round(load_s, 1),
            "tok_s_1": med("tok_s", "1"), "tok_s_8": med("tok_s", "8"),
            "ttft_ms_1": med("ttft_ms_median", "1"), "ttft_ms_8": med("ttft_ms_median", "8"), "rounds": rounds}


def worker(engine: str, runs: int, base_url: str, out: Path) -> None:
    out.write_text(json.dumps(asyncio.run(_measure(engine, runs, base_url))))


def run_engine(engine: str, python: str, runs: int, base_url: str = "", extra_pids: tuple[int, ...] = ()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [python, "-m", "evals.generation_bench", "--worker", engine, "--runs", str(runs),
               "--base-url", base_url, "--result", str(out)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        monitors = [PeakRss(proc.pid), *(PeakRss(p) for p in extra_pids)]
        rc = proc.wait()
        peaks = [m.stop() for m in monitors]
        if rc != 0:
            raise RuntimeError(f"{engine} benchmark worker exited with {rc}")
        result = json.loads(out.read_text())
    result["peak_rss_mb"] = round(sum(peaks) / 2**20)
    result["peak_rss_note"] = "client process + the llama.cpp server" if extra_pids else "engine process tree"
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="llamacpp,openai,vllm", help="comma-separated (default: all available)")
    p.add_argument("--runs", type=int, default=3, help="rounds per concurrency level (median reported)")
    p.add_argument("--vllm-venv", type=Path, default=ROOT / ".venv-vllm", help="the vLLM CPU lane's venv")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--base-url", default="", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.worker:
        worker(args.worker, args.runs, args.base_url, args.result)
        return 0

    from evals.openai_server import OpenAIServer
    from pipelines import models

    results = []
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        log.info("benchmarking %s", engine)
        if engine == "llamacpp":
            models.fetch(MODEL)
            results.append(run_engine(engine, sys.executable, args.runs))
        elif engine == "openai":
            with tempfile.TemporaryDirectory() as tmp:
                server = OpenAIServer(models.fetch(MODEL), Path(tmp), alias="bench").start()
                try:
                    results.append(run_engine(engine, sys.executable, args.runs, server.base_url, (server.proc.pid,)))
                finally:
                    server.stop()
        elif engine == "vllm":
            python = args.vllm_venv / "bin" / "python"
            if not python.exists():
                log.warning("skipping vllm: no venv at %s (make vllm-venv)", args.vllm_venv)
                continue
            models.convert(MODEL)
            results.append(run_engine(engine, str(python), args.runs))
        else:
            p.error(f"unknown engine {engine!r}; valid: llamacpp, openai, vllm")
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "model": MODEL,
              "max_tokens": MAX_TOKENS, "runs": args.runs, "results": results}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'engine':10} {'tok/s x1':>9} {'tok/s x8':>9} {'TTFT x1 ms':>11} {'TTFT x8 ms':>11} {'peak RSS MB':>12}")
    for r in results:
        print(f"{r['engine']:10} {r['tok_s_1']:9.1f} {r['tok_s_8']:9.1f} {r['ttft_ms_1']:11.0f} {r['ttft_ms_8']:11.0f} "
              f"{r['peak_rss_mb']:12d}")
    print(f"-> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
