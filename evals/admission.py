"""Load-aware admission, before and after, in one run (issue 41): closed-loop clients asking
distinct questions about the demo corpus (cache off), at 1, 2, 4, 8, 16 and 32 at once, against
`bentoml serve` with admission off (``RAGROUTE_ADMISSION=off``: every generation waits for its
turn and is cut at its budget) and on (the default), on the shipped cpu budgets.

    python -m evals.admission                      # both, levels 1..32, 60 s each
    python -m evals.admission --levels 1,4,16 --seconds 30

Per level and setting: latency p50/p95/max, degraded share and why (capacity, cut, failed),
undegraded answers per minute, the total budget overruns, how fast capacity answers came (p95),
and goodput: the share of generation time spent on answers that were delivered undegraded (a
generation cut at its budget, or abandoned for an extract, is time nobody received). The
engine's own sequential capacity is measured at level 1 (undegraded answers per minute, one
client). Writes evals/out/admission.json and evals/out/admission.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx

from evals.latency import pct
from evals.serving import ROOT, serving
from pipelines import config
from pipelines.config.budget import PROFILES

log = logging.getLogger("evals.admission")

OUT = ROOT / "evals" / "out"
LEVELS = (1, 2, 4, 8, 16, 32)


def questions() -> list[str]:
    """Distinct questions, one per help topic of the demo corpus (79)."""
    from pydoc_data.topics import topics

    return [f"What does the Python documentation say about {name.replace('-', ' ')}?" for name in sorted(topics)]


def reason(out: dict) -> str:
    """none (the router's tier answered, undegraded); load (undegraded, by a cheaper tier because
    the router's could not finish in time: load-aware routing); fallback (degraded: a cheaper
    tier answered after a failure); capacity (the extract, every tier having refused at once);
    budget (the extract or a cut answer after a tier ran out of time); other."""
    path = (out.get("route") or {}).get("path") or []
    if not out["degraded"]:
        return "load" if any(step["outcome"] == "failed" for step in path) else "none"
    if out["route"]["model"] != "extractive" and not any("cut" in w for w in out["warnings"]):
        return "fallback"
    if path and all("capacity:" in step["reason"] for step in path):
        return "capacity"
    text = " ".join(out["warnings"])
    if "exceeded" in text or "cut" in text or "not enough" in text or "stayed busy" in text:
        return "budget"
    return "other"


def run_level(url: str, clients: int, seconds: float, pool: list[str], total_s: float) -> dict:
    """``clients`` closed-loop clients, each asking distinct questions one after another (the
    next as soon as the last is answered) for ``seconds``; answers to questions asked before
    then are waited for and counted."""
    start = time.monotonic()

    def client(c: int) -> list[dict]:
        out = []
        with httpx.Client(timeout=120) as http:
            while time.monotonic() - start < seconds:
                q = pool[(c * 7 + len(out) * clients) % len(pool)]  # clients walk the pool apart
                t0 = time.monotonic()
                resp = http.post(f"{url}/rag_query", json={"query": q, "cache": "bypass"})
                elapsed = time.monotonic() - t0
                body = resp.json() if resp.status_code == 200 else {}
                out.append({"status": resp.status_code, "latency_s": elapsed,
                            "reason": reason(body) if body else "error",
                            "generate_ms": ((body.get("budget") or {}).get("generate") or {}).get("used_ms", 0.0),
                            "tier": (body.get("route") or {}).get("model"),
                            "path": [f"{p['tier']}: {p['outcome']} ({p['reason'][:90]})"
                                     for p in (body.get("route") or {}).get("path", [])],
                            "timings_ms": body.get("timings_ms")})
        return out

    with ThreadPoolExecutor(clients) as ex:
        answers = [a for part in ex.map(client, range(clients)) for a in part]
    wall = time.monotonic() - start
    lat = sorted(a["latency_s"] for a in answers)
    ok = [a for a in answers if a["reason"] in ("none", "load")]
    delivered = ("none", "load", "fallback")  # a model's answer reached the client
    capacity = sorted(a["latency_s"] for a in answers if a["reason"] == "capacity")
    spent = sum(a["generate_ms"] for a in answers)
    return {
        "clients": clients, "requests": len(answers), "wall_s": round(wall, 2),
        "latency_s": {"p50": round(pct(lat, 0.5), 3), "p95": round(pct(lat, 0.95), 3), "max": round(lat[-1], 3)},
        "degraded_share": round(1 - len(ok) / len(answers), 3),
        "reasons": {r: sum(a["reason"] == r for a in answers)
                    for r in ("none", "load", "fallback", "capacity", "budget", "other", "error")},
        "undegraded_per_min": round(len(ok) / wall * 60, 2),
        "routed_tier_per_min": round(sum(a["reason"] == "none" for a in answers) / wall * 60, 2),
        "generated_per_min": round(sum(a["reason"] in delivered for a in answers) / wall * 60, 2),
        "over_budget": sum(t > total_s * 1.05 for t in lat),
        "capacity_latency_p95_s": round(pct(capacity, 0.95), 3) if capacity else None,
        # generation time spent on answers a model gave and the client received (undegraded, by
        # load, or from the tier it fell back to), over all generation time
        "goodput": round(sum(a["generate_ms"] for a in answers if a["reason"] in delivered) / spent, 3)
        if spent else None,
        "answers": answers,
    }


def run_setting(name: str, admission: bool, levels: list[int], seconds: float, pool: list[str]) -> dict:
    env = {"RAGROUTE_ADMISSION": "on" if admission else "off", "RAGROUTE_CACHE": "off",
           "RAGROUTE_BUDGET_PROFILE": "cpu"}
    out = {}
    with serving(config.home(), env) as server:  # the demo index `make serve` built (built here otherwise)
        for level in levels:
            result = run_level(server.url, level, seconds, pool, PROFILES["cpu"]["total"] / 1000)
            log.info("%s, %d clients: %s", name, level, result)
            out[str(level)] = result
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, levels in report["settings"].items():
        xs = [int(k) for k in levels]
        axes[0].plot(xs, [levels[k]["latency_s"]["p95"] for k in levels], marker="o", label=name)
        axes[1].plot(xs, [levels[k]["undegraded_per_min"] for k in levels], marker="o", label=name)
        axes[2].plot(xs, [levels[k]["degraded_share"] for k in levels], marker="o", label=name)
    for ax, title in zip(axes, ("latency p95 (s)", "undegraded answers / min", "degraded share"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"admission on vs off - {report['date']}, {report['machine']}, `{report['command']}`", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long the clients of each level keep asking (their last answers are waited for)")
    parser.add_argument("--only", choices=("on", "off"), help="run one setting only")
    parser.add_argument("--out", type=Path, default=OUT / "admission.json", help="the JSON (the PNG goes beside it)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1 or args.seconds <= 0:
        parser.error("--levels must list clients >= 1, --seconds must be > 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool = questions()
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
              f"{__import__('os').cpu_count()} cores", "command": "python -m evals.admission " + " ".join(argv or []),
              "seconds": args.seconds, "settings": {}}
    for name, on in (("admission off", False), ("admission on", True)):
        if args.only and args.only != ("on" if on else "off"):
            continue
        report["settings"][name] = run_setting(name, on, levels, args.seconds, pool)
    first = str(levels[0])
    for name, levels_out in report["settings"].items():
        if first == "1":
            base = levels_out["1"]["undegraded_per_min"]
            for result in levels_out.values():
                result["share_of_sequential_capacity"] = round(result["undegraded_per_min"] / base, 3) if base else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    plot(report, args.out.with_suffix(".png"))
    for name, levels_out in report["settings"].items():
        for level, r in levels_out.items():
            log.info("%-14s %3s clients: p50 %5.1f s p95 %5.1f s max %5.1f s | degraded %4.0f%% %s | %5.1f ok/min "
                     "(%5.1f by the router's tier) | over budget %d | capacity p95 %s s | goodput %s", name, level, r["latency_s"]["p50"],
                     r["latency_s"]["p95"], r["latency_s"]["max"], 100 * r["degraded_share"], r["reasons"],
                     r["undegraded_per_min"], r["routed_tier_per_min"], r["over_budget"], r["capacity_latency_p95_s"], r["goodput"])
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
