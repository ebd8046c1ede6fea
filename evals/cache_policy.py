"""The error-bounded semantic cache against static thresholds, replayed on streams of questions.

    python -m evals.cache_policy                 # ~5 min on 2 cores (first run embeds QQP: +3 min)
    python -m evals.cache_policy --seeds 3 --skip-qqp

Data sets (the first two from ../shared/data/cache, or --data / RAGROUTE_DATA):
- **QQP test half** (the verifier was fitted on the other half): each pair's first question is
  cached, the second looks it up; a hit is right when the pair is labelled duplicate. QQP's own
  labels call identical questions duplicates only ~82% of the time (evals/cache_verifier.py),
  so every policy's "wrong" hits include label noise.
- **GPTCache's pairs**: every "origin" cached, every "similar" looked up among all of them
  (and the earlier lookups, which are cached once answered); right when the entry found means
  the same as the lookup (its own origin, or an earlier lookup of that origin).
- **In-domain** (evals/data/cache_paraphrases.jsonl, the demo corpus's topics): the 170
  questions cached; their rewordings (right: the same question's answer) and near-misses
  (no cached answer is right for them) looked up in a random order.

A stream is replayed once per seed (lookups shuffled); what was answered fresh is cached, as the
service does. For each policy: hit rate on true paraphrases (lookups that have a right entry),
wrong-hit rate over all lookups (with its 95% Clopper-Pearson interval), and fresh answers
spent on verification samples. Policies: plain cosine thresholds, the shipped verifier (its
fixed cut on P(same question)), and the error-bounded policy (pipelines/query/cache/policy.py)
at bounds 1%, 2%, 5%. Here an observation's outcome is the label; in the service it is the
comparison of the two answers (``answers_agree``), whose agreement with the labels is measured
on real answers when evals/out/cache_policy/answers.jsonl exists (``python -m evals.cache_answers``),
and a run with those error rates injected is reported too ("bound 2%, service comparison").
The best static threshold at the same wrong-hit rate sweeps the cosine (and, as a stronger
baseline, the verifier's P) on a fine grid over the same streams.

Writes evals/out/cache_policy.json and .png; medians over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evals.cache_verifier import default_data, embed_all, in_test_split, load_qqp
from evals.serving import ROOT
from pipelines.query.cache.policy import (BANDS, EntryStats, ErrorBoundPolicy, PoolStats, answers_agree, band,
                                          comparable, interval)
from pipelines.query.cache.verify import HitVerifier

log = logging.getLogger("evals.cache_policy")

OUT = ROOT / "evals" / "out" / "cache_policy.json"
IN_DOMAIN = ROOT / "evals" / "data" / "cache_paraphrases.jsonl"
ANSWERS = ROOT / "evals" / "out" / "cache_policy" / "answers.jsonl"
PLAIN = (0.85, 0.90, 0.95)
BOUNDS = (0.01, 0.02, 0.05)
SWEEP = np.round(np.arange(0.80, 1.0001, 0.01), 3)
K = 3  # candidates per lookup, as the service


@dataclass
class Stream:
    """Texts with their embeddings; which entries are cached first; the lookups; the meaning of
    each text (a hit is right when the entry's meaning is the lookup's)."""

    name: str
    texts: list[str]
    vecs: np.ndarray
    meaning: list[str]
    initial: list[int]
    lookups: list[int]
    only: dict[int, int] | None = None  # QQP: a lookup's one candidate (its pair's first question)
    verdicts: dict[tuple[int, int], tuple[bool, float | None, bool]] = field(default_factory=dict)
    # (entry, lookup) -> (vetoed, P or None, verifier accepts)


def in_domain_stream(cache_dir: Path) -> Stream:
    items = [json.loads(line) for line in IN_DOMAIN.open() if line.strip()]
    texts, meaning, initial, lookups = [], [], [], []
    for i, item in enumerate(items):
        initial.append(len(texts))
        texts.append(item["question"])
        meaning.append(f"q{i}")
        for r in item["rewordings"]:
            lookups.append(len(texts))
            texts.append(r)
            meaning.append(f"q{i}")
        for j, n in enumerate(item["near_misses"]):
            lookups.append(len(texts))
            texts.append(n)
            meaning.append(f"q{i}-near{j}")
    vecs = embed_all(sorted(set(texts)), cache_dir)
    return Stream("in-domain", texts, np.stack([vecs[t] for t in texts]), meaning, initial, lookups)


def gptcache_stream(data: Path, cache_dir: Path) -> Stream:
    pairs = json.loads((data / "cache" / "gptcache-mock-pairs.json").read_text())
    texts, meaning, initial, lookups = [], [], [], []
    for i, p in enumerate(pairs):
        initial.append(len(texts))
        texts.append(p["origin"])
        meaning.append(f"o{i}")
    for i, p in enumerate(pairs):
        lookups.append(len(texts))
        texts.append(p["similar"])
        meaning.append(f"o{i}")
    vecs = embed_all(sorted(set(texts)), cache_dir)
    return Stream("gptcache", texts, np.stack([vecs[t] for t in texts]), meaning, initial, lookups)


def qqp_stream(data: Path, cache_dir: Path) -> Stream:
    pairs = [q for q in load_qqp(data) if in_test_split(q["a"], q["b"])]
    vecs = embed_all(sorted({q["a"] for q in load_qqp(data)} | {q["b"] for q in load_qqp(data)}), cache_dir)
    texts, meaning, initial, lookups, only = [], [], [], [], {}
    for i, p in enumerate(pairs):
        a, b = len(texts), len(texts) + 1
        texts += [p["a"], p["b"]]
        meaning += [f"p{i}", f"p{i}" if p["duplicate"] else f"p{i}-other"]
        initial.append(a)
        lookups.append(b)
        only[b] = a
    return Stream("qqp-test", texts, np.stack([vecs[t] for t in texts]), meaning, initial, lookups, only)


def score_pairs(stream: Stream, verifier: HitVerifier) -> None:
    """The verifier's verdict for every (entry, lookup) pair that can be a candidate (cosine at or
    above its floor), in one batched pass (the pair model is the slow part)."""
    floor = verifier.vector_threshold
    pairs = []
    if stream.only is not None:
        for q, e in stream.only.items():
            if float(stream.vecs[e] @ stream.vecs[q]) >= floor:
                pairs.append((e, q))
    else:
        pool = np.array(stream.initial + stream.lookups)
        for q in stream.lookups:
            sims = stream.vecs[pool] @ stream.vecs[q]
            pairs += [(int(e), q) for e in pool[sims >= floor] if e != q and stream.texts[e] != stream.texts[q]]
    t0 = time.perf_counter()
    found = verifier.check_many([(stream.texts[e], stream.texts[q], float(stream.vecs[e] @ stream.vecs[q]),
                                  stream.vecs[e], stream.vecs[q]) for e, q in pairs])
    for (e, q), v in zip(pairs, found, strict=True):
        stream.verdicts[(e, q)] = (v.probability is None and not v.accept, v.probability, v.accept)
    log.info("%s: %d candidate pairs scored in %.0f s", stream.name, len(pairs), time.perf_counter() - t0)


# A policy sees a lookup's candidates (entry, cosine, vetoed, score, verifier accepts), most similar
# first, and the entries' and the pool's statistics; it returns (action, entry).
Candidate = tuple[int, float, bool, float, bool]


@dataclass
class Outcome:
    lookups: int = 0
    paraphrases: int = 0  # lookups with a right entry cached (or cacheable) before them
    hits_right: int = 0
    hits_wrong: int = 0
    samples: int = 0  # fresh answers spent on verification samples
    observations: int = 0
    near_miss_hits: int = 0  # in-domain: hits on near-misses
    near_misses: int = 0

    def row(self) -> dict:
        low, high = interval(self.hits_wrong, self.lookups)
        return {"hit_rate_on_paraphrases": self.hits_right / max(1, self.paraphrases),
                "wrong_hit_rate": self.hits_wrong / max(1, self.lookups),
                "wrong_hit_rate_ci95": [round(low, 5), round(high, 5)],
                "wrong_share_of_hits": self.hits_wrong / max(1, self.hits_right + self.hits_wrong),
                "hits": self.hits_right + self.hits_wrong, "verification_samples": self.samples,
                "observations": self.observations, "lookups": self.lookups, "paraphrases": self.paraphrases,
                "near_miss_hit_rate": self.near_miss_hits / self.near_misses if self.near_misses else None}


def replay(stream: Stream, decide: Callable, seed: int, flip: tuple[float, float] = (0.0, 0.0)) -> Outcome:
    """One pass over the shuffled lookups. ``decide(cands, entry_stats, pool, rng)`` -> (action,
    entry index or None); actions: hit, verify, observe, miss. ``flip``: the chance an observation
    of a right pair is recorded wrong, and of a wrong pair recorded right (the service's answer
    comparison's measured errors)."""
    rng = random.Random(seed)
    order = list(stream.lookups)
    rng.shuffle(order)
    cached = list(stream.initial)
    entry_stats: dict[int, EntryStats] = {}
    verified, wrong, looks, other = [0] * BANDS, [0] * BANDS, [0] * BANDS, 0
    out = Outcome()
    meanings_cached = {stream.meaning[e] for e in cached}
    for q in order:
        out.lookups += 1
        is_para = stream.meaning[q] in meanings_cached
        out.paraphrases += is_para
        near = stream.name == "in-domain" and "-near" in stream.meaning[q]
        out.near_misses += near
        if stream.only is not None:
            pool_idx = [stream.only[q]]
        else:
            pool_idx = cached
        idx = np.array(pool_idx)
        sims = stream.vecs[idx] @ stream.vecs[q]
        top = np.argsort(-sims)[:K]
        cands: list[Candidate] = []
        for i in top:
            e = int(idx[i])
            v = stream.verdicts.get((e, q))
            if v is None:
                continue  # below the floor (or the same text)
            vetoed, p, accepts = v
            cands.append((e, float(sims[i]), vetoed, p if p is not None else float(sims[i]), accepts))
        pool = PoolStats(tuple(verified), tuple(wrong), lookups=tuple(looks), other_lookups=other)
        action, e = decide(cands, entry_stats, pool, rng) if cands else ("miss", None)
        right = e is not None and stream.meaning[e] == stream.meaning[q]
        if action != "miss" and e is not None:  # the policy's denominator: every lookup
            looks[band(next(c[3] for c in cands if c[0] == e))] += 1
        else:
            other += 1
        if action == "hit":
            out.hits_right += right
            out.hits_wrong += not right
            out.near_miss_hits += near
            continue
        if action in ("verify", "observe") and e is not None:
            score = next(c[3] for c in cands if c[0] == e)
            seen_wrong = not right
            if flip != (0.0, 0.0):
                seen_wrong = (rng.random() < flip[0]) if right else (rng.random() >= flip[1])
            b = band(score)
            verified[b] += 1
            wrong[b] += seen_wrong
            entry_stats[e] = entry_stats.get(e, EntryStats()).after(score, seen_wrong)
            out.observations += 1
            out.samples += action == "verify"
        cached.append(q)  # answered fresh: cached for the next lookups
        meanings_cached.add(stream.meaning[q])
    return out


def plain(threshold: float):
    def decide(cands, _stats, _pool, _rng):
        e, sim = cands[0][0], cands[0][1]
        return ("hit", e) if sim >= threshold else ("miss", None)
    return decide


def verifier_cut(cut: float | None = None):
    """The shipped verifier (its accept flag), or a static cut on its P (the rules still veto)."""
    def decide(cands, _stats, _pool, _rng):
        for e, _sim, vetoed, score, accepts in cands:
            if vetoed:
                continue
            if (accepts if cut is None else score >= cut):
                return "hit", e
        return "miss", None
    return decide


def bounded(max_error: float):
    def decide(cands, stats, pool, rng):
        scored = [(score, e) for e, _sim, vetoed, score, _ in cands if not vetoed]
        if not scored:
            return "miss", None
        score, e = max(scored)
        policy = ErrorBoundPolicy(max_error, rng=rng)
        return policy.decide(score, stats.get(e, EntryStats()), pool).action, e
    return decide


def median_row(rows: list[dict]) -> dict:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], (int, float)) and values[0] is not None:
            out[key] = round(statistics.median(values), 5)
        elif key == "wrong_hit_rate_ci95":
            out[key] = values[len(values) // 2]
        else:
            out[key] = values[0] if all(v == values[0] for v in values) else values
    out["runs"] = len(rows)
    return out


def comparison_errors(cache_dir: Path, answers: Path = ANSWERS) -> dict | None:
    """How often the service's answer comparison disagrees with the labels, on real answers."""
    if not answers.is_file():
        return None
    from pipelines.config import EmbeddingConfig
    from pipelines.query.embed import SentenceTransformerEmbedder

    rows = [json.loads(line) for line in answers.open()]
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        if not r["degraded"]:
            by.setdefault(r["question"], {})[r["role"]] = r
    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    result = {}
    for role in ("rewording", "near_miss"):
        pairs = [(d["question"], d[role]) for d in by.values() if "question" in d and role in d]
        agree = []
        for cached, fresh in pairs:
            vecs = embedder.encode([comparable(cached["answer"]), comparable(fresh["answer"])])
            payload = {"answer": cached["answer"], "sources": [{"doc_id": s} for s in cached["sources"]]}
            agree.append(answers_agree(payload, fresh["sources"], vecs)[0])
        result[role] = {"pairs": len(pairs), "judged_agree": round(sum(agree) / max(1, len(agree)), 4)}
    # a right pair recorded wrong / a wrong pair recorded right
    result["flip"] = [round(1 - result["rewording"]["judged_agree"], 4), round(result["near_miss"]["judged_agree"], 4)]
    return result


def best_static(stream: Stream, seeds: list[int], max_wrong: float, verifier_p: bool) -> dict:
    """The static threshold with the most right hits whose median wrong-hit rate is within ``max_wrong``."""
    best = {"threshold": None, "hit_rate_on_paraphrases": 0.0, "wrong_hit_rate": 0.0}
    grid = np.round(np.arange(0.0, 1.0001, 0.05), 3) if verifier_p else SWEEP
    for t in grid:
        runs = [replay(stream, verifier_cut(float(t)) if verifier_p else plain(float(t)), s).row() for s in seeds]
        hit = statistics.median(r["hit_rate_on_paraphrases"] for r in runs)
        wrong = statistics.median(r["wrong_hit_rate"] for r in runs)
        if wrong <= max_wrong and hit > best["hit_rate_on_paraphrases"]:
            best = {"threshold": float(t), "hit_rate_on_paraphrases": round(hit, 5), "wrong_hit_rate": round(wrong, 5)}
    return best


def evaluate(stream: Stream, seeds: list[int], flip: list[float] | None) -> dict:
    policies: dict[str, Callable] = {f"cosine >= {t:.2f}": plain(t) for t in PLAIN}
    policies["verifier (fixed cut)"] = verifier_cut()
    policies |= {f"bound {b:.0%}": bounded(b) for b in BOUNDS}
    table = {}
    for name, decide in policies.items():
        t0 = time.perf_counter()
        table[name] = median_row([replay(stream, decide, s).row() for s in seeds])
        log.info("%s %-22s hit rate %.3f  wrong-hit rate %.4f  samples %d  (%.1f s)", stream.name, name,
                 table[name]["hit_rate_on_paraphrases"], table[name]["wrong_hit_rate"],
                 table[name]["verification_samples"], time.perf_counter() - t0)
    if flip is not None:
        name = "bound 2%, service comparison"
        table[name] = median_row([replay(stream, bounded(0.02), s, tuple(flip)).row() for s in seeds])
        log.info("%s %-22s hit rate %.3f  wrong-hit rate %.4f", stream.name, name,
                 table[name]["hit_rate_on_paraphrases"], table[name]["wrong_hit_rate"])
    at = table["bound 2%"]["wrong_hit_rate"]
    static = {"cosine": best_static(stream, seeds, at, False), "verifier_p": best_static(stream, seeds, at, True)}
    ratio = {k: round(table["bound 2%"]["hit_rate_on_paraphrases"] / v["hit_rate_on_paraphrases"], 3)
             if v["hit_rate_on_paraphrases"] else None for k, v in static.items()}
    return {"lookups": len(stream.lookups), "cached_first": len(stream.initial), "policies": table,
            "best_static_at_bound_2pct_wrong_rate": static, "bound_2pct_hit_rate_over_best_static": ratio}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["datasets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        for policy, row in result["datasets"][name]["policies"].items():
            marker = "o" if policy.startswith("bound") else "s" if policy.startswith("verifier") else "x"
            ax.scatter(row["wrong_hit_rate"] * 100, row["hit_rate_on_paraphrases"] * 100, marker=marker)
            ax.annotate(policy, (row["wrong_hit_rate"] * 100, row["hit_rate_on_paraphrases"] * 100), fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("wrong hits, % of all lookups")
        ax.set_ylabel("hits on true paraphrases, %")
        ax.grid(alpha=0.3)
    fig.suptitle("Semantic cache: error-bounded policy vs static thresholds (medians over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.cache_policy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data(), help="shared data folder (has cache/)")
    p.add_argument("--seeds", type=int, default=5, help="stream orders per data set (default 5)")
    p.add_argument("--skip-qqp", action="store_true", help="leave out QQP (its embeddings take minutes the first time)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--answers", type=Path, default=ANSWERS,
                   help="real answers for the comparison's error rates (python -m evals.cache_answers)")
    p.add_argument("--comparison-only", action="store_true",
                   help="only measure the answer comparison on --answers (seconds; prints and saves it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cache_dir = args.out.parent / "cache"
    if args.comparison_only:
        errors = comparison_errors(cache_dir, args.answers)
        if errors is None:
            p.error(f"no answers at {args.answers}: run python -m evals.cache_answers first")
        log.info("service comparison on real answers (%s): %s", args.answers, errors)
        target = args.out.with_name(f"{args.out.stem}-comparison-{args.answers.stem}.json")
        target.write_text(json.dumps({"answers": str(args.answers), "service_comparison": errors}, indent=2) + "\n")
        log.info("wrote %s", target)
        return 0
    verifier = HitVerifier.load()
    seeds = list(range(args.seeds))
    streams = [in_domain_stream(cache_dir)]
    if (args.data / "cache" / "gptcache-mock-pairs.json").is_file():
        streams.append(gptcache_stream(args.data, cache_dir))
    else:
        log.warning("no GPTCache pairs at %s/cache: left out", args.data)
    if not args.skip_qqp and (args.data / "cache" / "qqp-pairs.jsonl").is_file():
        streams.append(qqp_stream(args.data, cache_dir))
    errors = comparison_errors(cache_dir, args.answers)
    if errors:
        log.info("service comparison on real answers: %s", errors)
    result = {"meta": {"seeds": len(seeds), "candidates_per_lookup": K, "cosine_floor": verifier.vector_threshold,
                       "verifier_accept_probability": verifier.accept_probability, "bounds": BOUNDS,
                       "confidence": 0.95, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "service_comparison": errors, "datasets": {}}
    for stream in streams:
        score_pairs(stream, verifier)
        result["datasets"][stream.name] = evaluate(stream, seeds, errors["flip"] if errors else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
