"""Results pages generated from the evals' saved JSON, not typed (`make report`).

Each report below renders one eval's JSON (``evals/out/<name>.json``, what the eval wrote) into
the Markdown between ``<!-- report:<name> -->`` and ``<!-- /report:<name> -->`` in a page of
``docs/``: its table, stamped with the date, machine and command that produced the numbers.

    python -m evals.report            # snapshot each eval's latest JSON into docs/results/, re-render the pages
    python -m evals.report --check    # exit 1 naming each block that differs from what its snapshot renders

The snapshot (``docs/results/<name>.json``: the eval's JSON without its per-request rows) is
committed with the page, so the numbers on a page can always be traced to, and re-rendered from,
the run that measured them; ``tests/unit/test_report.py`` fails when a page's table and its
snapshot disagree. An eval whose JSON is absent from ``evals/out/`` keeps its snapshot.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "evals" / "out"
DOCS = ROOT / "docs"
SNAPSHOTS = DOCS / "results"
ROW_KEYS = ("answers",)  # per-request rows: in evals/out only, not in the snapshot

log = logging.getLogger("evals.report")


def stamp(meta: dict, detail: str = "") -> str:
    more = f" ({detail})" if detail else ""
    return f"*Measured {meta['date']} on {meta['machine']} with `{meta['command'].strip()}`{more}.*"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def admission(data: dict) -> str:
    """Per level and setting: latency, degraded share and why, undegraded answers a minute (and
    how many of those the router's own tier gave), capacity answers' p95, goodput."""
    rows = ["| clients | admission | latency p50 / p95 / max (s) | degraded (capacity extract / fallback / cut) "
            "| undegraded answers / min (by the router's tier) | share of sequential capacity "
            "| capacity extract p95 (s) | goodput |",
            "|---|---|---|---|---|---|---|---|"]
    levels = sorted({int(k) for setting in data["settings"].values() for k in setting})
    for level in levels:
        for name, setting in data["settings"].items():
            r = setting.get(str(level))
            if r is None:
                continue
            lat, why = r["latency_s"], r["reasons"]
            routed = r.get("routed_tier_per_min", r["undegraded_per_min"])
            rows.append(
                f"| {level} | {name.removeprefix('admission ')} | {lat['p50']:.1f} / {lat['p95']:.1f} / {lat['max']:.1f} "
                f"| {_pct(r['degraded_share'])} ({why['capacity']} / {why['fallback']} / {why['budget']}) "
                f"| {r['undegraded_per_min']:.1f} ({routed:.1f}) | {_num(r.get('share_of_sequential_capacity'), 2)} "
                f"| {_num(r['capacity_latency_p95_s'], 1)} | {_num(r['goodput'], 2)} |")
    seconds = data.get("seconds")
    span = f"each level {seconds:.0f} s of closed-loop clients" if seconds else f"{data.get('rounds')} questions a client"
    return "\n".join([stamp(data, f"{span}; JSON: `docs/results/admission.json`"), "", *rows])


JUDGE_SIGNALS = (("cosine", "MiniLM cosine"), ("verifier", "the verifier"), ("sources", "sources"),
                 ("rare terms", "rare terms (corpus-IDF-weighted word overlap)"), ("judge", "judge (1.5B, worked examples)"),
                 ("combined", "**combined**"))


def cache_judge(data: dict) -> str:
    """The held-out ROC summary of each signal, and the combined judge at the tune half's threshold."""
    meta = data["meta"]
    rows = ["| signal | AUC | right pairs passed at ≤ 2% of wrong ones (threshold on these pairs) |", "|---|---|---|"]
    for key, label in JUDGE_SIGNALS:
        s = data["held_out"][key]
        auc = f"**{s['auc']:.2f}**" if key == "combined" else f"{s['auc']:.2f}"
        rows.append(f"| {label} | {auc} | {100 * s['right_passed']:.1f}% |")
    c = data["combined"]

    def count(key: str) -> str:
        part = c[key]
        lo, hi = part["ci95"]
        return f"{part['count'][0]} of {part['count'][1]} ({100 * part['share']:.1f}%; 95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"

    when = meta.get("started", "")[:10]
    head = (f"*Measured {when} with `python -m evals.cache_judge --fit` on {meta['pairs']} pairs "
            f"({meta['rewordings']} rewordings, {meta['near_misses']} near-misses, {meta['neighbours']} neighbours); "
            f"held-out half {meta['test_pairs']} pairs; JSON: `docs/results/cache_judge.json`.*")
    tail = (f"At the tune half's threshold (P ≥ {c['threshold_from_tune']:.2f}), held out: rewordings passed "
            f"{count('test_rewordings_passed')}; near-misses {count('test_near_misses_passed')}; neighbours that ask "
            f"something else {count('test_neighbours_different_passed')}; all wrong pairs {count('test_all_wrong_passed')}.")
    return "\n".join([head, "", *rows, "", tail])


ROUTER_LABELS = {"heuristic": "heuristic (built in)",
                 "learned": "learned (`ragroute router train`'s k-NN + ridge on the tune half's labels)",
                 "cascade (logprob_mean)": "cascade on the small answer's mean log-probability",
                 "random": "random", "oracle": "oracle (knows both answers)"}


def qa_routing(data: dict) -> str:
    """Each router between the two tiers on the in-domain QA set: threshold from the tune half,
    everything else on the test half."""
    rows = [f"| router ({data['small']} -> {data['large']}) | threshold (tune) | right, test | sent to `large` "
            "| kept of large's right | latency p50 / p95 (s) | APGR |", "|---|---|---|---|---|---|---|"]
    for r in data["routers"]:
        t = r["test"]
        threshold = "" if r["router"] in ("oracle", "random") else f"{r['threshold']:.3f}"
        rows.append(f"| {ROUTER_LABELS.get(r['router'], r['router'])} | {threshold} | {100 * t['right']:.1f}% "
                    f"| {100 * t['large_share']:.0f}% | {100 * t['kept_of_large']:.1f}% "
                    f"| {t['latency_s']['p50']:.1f} / {t['latency_s']['p95']:.1f} | {t['apgr']:.2f} |")
    q = data["questions"]
    detail = (f"threshold: the fewest questions to `large` keeping {100 * data['keep']:.0f}% of its right share on the "
              f"{q['tune']} tune questions; reported on the {q['test']} test questions: small alone "
              f"{100 * data['small_only']['test']:.1f}% right, large alone {100 * data['large_only']['test']:.1f}%; "
              "JSON: `docs/results/qa_routing.json`")
    return "\n".join([stamp({**data, "date": data["date"][:10]}, detail), "", *rows])


REPORTS: dict[str, Callable[[dict], str]] = {"admission": admission, "cache_judge": cache_judge,
                                             "qa_routing": qa_routing}


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- report:{name} -->\n)(.*?)(<!-- /report:{name} -->)", re.S)


def snapshot(name: str) -> dict | None:
    """The eval's latest JSON (per-request rows dropped) copied into docs/results/, or the
    committed snapshot when the eval has not been run here."""
    fresh = OUT / f"{name}.json"
    path = SNAPSHOTS / f"{name}.json"
    if fresh.exists():
        data = _strip(json.loads(fresh.read_text()))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        log.info("snapshot %s <- %s", _show(path), _show(fresh))
    return json.loads(path.read_text()) if path.exists() else None


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ROW_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def blocks(pages: list[Path] | None = None) -> list[tuple[Path, str, str]]:
    """(page, report name, the block's current text) for every report block in docs/."""
    out = []
    for page in pages or sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for name in REPORTS:
            out.extend((page, name, m.group(2)) for m in _block(name).finditer(text))
        unknown = set(re.findall(r"<!-- report:([\w-]+) -->", text)) - set(REPORTS)
        if unknown:
            raise ValueError(f"{_show(page)}: no report named {', '.join(sorted(unknown))}")
    return out


def _show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def render(name: str, data: dict) -> str:
    return REPORTS[name](data).rstrip("\n") + "\n"


def differences(snapshots: Path = SNAPSHOTS, pages: list[Path] | None = None) -> list[str]:
    """Each block whose text is not what its snapshot renders."""
    found = []
    for page, name, text in blocks(pages):
        path = snapshots / f"{name}.json"
        if not path.exists():
            found.append(f"{page.name}: report {name} has no snapshot {_show(path)}")
        elif text != render(name, json.loads(path.read_text())):
            found.append(f"{page.name}: report {name} differs from {_show(path)} (run `make report`)")
    return found


def write(pages: list[Path] | None = None) -> int:
    written = 0
    for page in pages or sorted(DOCS.glob("*.md")):
        text = original = page.read_text()
        for name in REPORTS:
            if not _block(name).search(text):
                continue
            data = snapshot(name)
            if data is None:
                log.warning("%s: no JSON for report %s (run its eval); block left as is", page.name, name)
                continue
            text = _block(name).sub(lambda m, n=name, d=data: m.group(1) + render(n, d) + m.group(3), text)
        if text != original:
            page.write_text(text)
            written += 1
            log.info("rendered %s", _show(page))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare the pages with their snapshots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.check:
        found = differences()
        for line in found:
            log.error("%s", line)
        return 1 if found else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
