"""Semantic-cache precision: plain vector threshold vs threshold + hit verifier.

    python -m evals.cache_verifier            # evaluate with the shipped verifier weights
    python -m evals.cache_verifier --train    # refit the verifier on the QQP tune split first

Data (never copied into the repo; default ../shared/data/cache, or --data / RAGROUTE_DATA):
- qqp-pairs.jsonl: Quora question pairs labelled duplicate / not. Split deterministically by
  a hash of the pair into a tune half (verifier fitting and threshold choice) and a test
  half (every number reported for QQP comes from the test half).
- gptcache-mock-pairs.json: GPTCache's benchmark: store every "origin", query every
  "similar"; a hit is correct when the best match is the pair's own origin.

Writes evals/out/cache_verifier.json (and, with --train, pipelines/query/verifier.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from evals.serving import ROOT
from pipelines.query.verify import FORMAT_VERSION, WEIGHTS_FILE, HitVerifier

log = logging.getLogger("evals.cache_verifier")

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.95)
TRAIN_FLOOR = 0.80  # the verifier only ever sees candidates above the vector threshold
TARGET_RECALL = 0.42  # of all duplicates, on the tune split: a margin over the 0.40 target on test
SPLIT_SALT = "ragroute-qqp-split-v1"


def default_data() -> Path:
    return Path(os.environ.get("RAGROUTE_DATA", ROOT.parent / "shared" / "data"))


def in_test_split(a: str, b: str) -> bool:
    return hashlib.sha256(f"{SPLIT_SALT}\0{a}\0{b}".encode()).digest()[0] % 2 == 1


def embed_all(texts: list[str], cache: Path) -> dict[str, np.ndarray]:
    """Embeddings of unique texts, cached on disk keyed by the texts' hash."""
    from pipelines.config import EmbeddingConfig
    from pipelines.query.embed import SentenceTransformerEmbedder

    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"embeddings-{key}.npy"
    if path.is_file():
        vecs = np.load(path)
    else:
        t0 = time.perf_counter()
        vecs = SentenceTransformerEmbedder(EmbeddingConfig(batch_size=128)).encode(texts)
        log.info("embedded %d texts in %.0f s", len(texts), time.perf_counter() - t0)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
    return dict(zip(texts, vecs, strict=True))


def load_qqp(data: Path) -> list[dict]:
    with (data / "cache" / "qqp-pairs.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]


CUTS = {"entities": (0.0, 0.25, 0.5), "order": (0.0, 0.2, 0.5)}  # other rules take no cut-off
MIN_FIRES = 10


def train(tune: list[dict], sims: np.ndarray, data_hash: str) -> dict:
    """Choose the active rules (and cut-offs) and the cosine threshold on the tune split."""
    from pipelines.query.verify import RULES, _Question

    floor = sims >= TRAIN_FLOOR
    cand = [p for p, k in zip(tune, floor) if k]
    y = np.array([p["duplicate"] for p in cand])
    qs = [(_Question.of(p["a"]), _Question.of(p["b"])) for p in cand]
    base = float(y.mean())
    rules: dict[str, float] = {}
    stats = {}
    for name, rule in RULES.items():
        best = None
        for cut in CUTS.get(name, (0.0,)):
            fired = np.array([rule(a, b, cut) is not None for a, b in qs])
            if not fired.any():
                continue
            row = {"cut": cut, "fires": int(fired.sum()), "duplicate_rate_when_fired": round(float(y[fired].mean()), 4),
                   "precision_without_fired": round(float(y[~fired].mean()), 4)}
            if best is None or row["duplicate_rate_when_fired"] < best["duplicate_rate_when_fired"]:
                best = row
        stats[name] = best
        # Keep a rule when the pairs it rejects are duplicates less often than average: then
        # rejecting them raises precision, however rarely the rule fires (enable/disable).
        if best and best["fires"] >= MIN_FIRES and best["duplicate_rate_when_fired"] < base:
            rules[name] = best["cut"]
    log.info("rules kept: %s (base duplicate rate above %.2f: %.3f)", rules, TRAIN_FLOOR, base)
    verifier = HitVerifier(rules, 0.0)
    passed = np.array([not verifier.reasons(p["a"], p["b"]) for p in cand])
    cand_sims = sims[floor]
    dup_total = sum(p["duplicate"] for p in tune)
    op = (0.0, 0.95)
    for t in np.arange(0.80, 0.96, 0.01):
        hit = passed & (cand_sims >= t)
        if hit.any() and y[hit].sum() / dup_total >= TARGET_RECALL and y[hit].mean() > op[0]:
            op = (float(y[hit].mean()), round(float(t), 2))
    log.info("operating point on tune: precision %.3f at cosine >= %.2f", *op)
    model = {"rules": rules, "vector_threshold": op[1]}
    body = json.dumps(model, sort_keys=True).encode()
    return {
        "manifest": {
            "format_version": FORMAT_VERSION,
            "embedding_model": "all-MiniLM-L6-v2",
            "training_data": "qqp-pairs.jsonl (tune half)",
            "training_data_sha256": data_hash,
            "split_salt": SPLIT_SALT,
            "train_floor": TRAIN_FLOOR,
            "tune_pairs_above_floor": len(cand),
            "target_recall": TARGET_RECALL,
            "tune_precision_at_operating_point": round(op[0], 4),
            "rule_stats": stats,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model_sha256": hashlib.sha256(body).hexdigest(),
        },
        "model": model,
    }


def qqp_table(pairs: list[dict], sims: np.ndarray, verifier: HitVerifier | None) -> list[dict]:
    dup = np.array([p["duplicate"] for p in pairs])
    accepted = np.ones(len(pairs), dtype=bool)
    if verifier is not None:
        candidates = sims >= min(THRESHOLDS)
        for i in np.flatnonzero(candidates):
            accepted[i] = verifier.check(pairs[i]["a"], pairs[i]["b"], float(sims[i])).accept
    rows = []
    for t in THRESHOLDS:
        hit = (sims >= t) & accepted
        tp, fp = int((hit & dup).sum()), int((hit & ~dup).sum())
        rows.append({"threshold": t, "verifier": verifier is not None, "hits": tp + fp,
                     "precision": round(tp / max(1, tp + fp), 4), "recall": round(tp / max(1, dup.sum()), 4),
                     "false_hit_rate": round(fp / max(1, (~dup).sum()), 4)})
    return rows


def gptcache_table(data: Path, cache_dir: Path, verifier: HitVerifier | None) -> list[dict]:
    pairs = json.loads((data / "cache" / "gptcache-mock-pairs.json").read_text())
    origins = [p["origin"] for p in pairs]
    vecs = embed_all(sorted(set(origins) | {p["similar"] for p in pairs}), cache_dir)
    store = np.stack([vecs[o] for o in origins])
    rows = []
    for use_verifier in ([False, True] if verifier else [False]):
        for t in THRESHOLDS:
            correct = wrong = miss = 0
            for p in pairs:
                sims = store @ vecs[p["similar"]]
                best = int(np.argmax(sims))
                ok = sims[best] >= t and (not use_verifier or
                                          verifier.check(origins[best], p["similar"], float(sims[best])).accept)
                if not ok:
                    miss += 1
                elif origins[best] == p["origin"]:
                    correct += 1
                else:
                    wrong += 1
            rows.append({"threshold": t, "verifier": use_verifier, "correct_hits": correct, "wrong_hits": wrong,
                         "misses": miss})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.cache_verifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data(), help="shared data folder (has cache/)")
    p.add_argument("--train", action="store_true", help=f"refit the verifier and write {WEIGHTS_FILE.name}")
    p.add_argument("--out", type=Path, default=ROOT / "evals" / "out" / "cache_verifier.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (args.data / "cache" / "qqp-pairs.jsonl").is_file():
        raise SystemExit(f"no evaluation data at {args.data}/cache (set --data or RAGROUTE_DATA)")
    cache_dir = args.out.parent / "cache"

    pairs = load_qqp(args.data)
    vecs = embed_all(sorted({q["a"] for q in pairs} | {q["b"] for q in pairs}), cache_dir)
    sims = np.array([float(vecs[q["a"]] @ vecs[q["b"]]) for q in pairs])
    test = np.array([in_test_split(q["a"], q["b"]) for q in pairs])
    tune_pairs = [q for q, t in zip(pairs, test) if not t]
    test_pairs = [q for q, t in zip(pairs, test) if t]
    if args.train:
        data_hash = hashlib.sha256((args.data / "cache" / "qqp-pairs.jsonl").read_bytes()).hexdigest()
        artifact = train(tune_pairs, sims[~test], data_hash)
        WEIGHTS_FILE.write_text(json.dumps(artifact, indent=2) + "\n")
        log.info("wrote %s", WEIGHTS_FILE)
    verifier = HitVerifier.load()

    result = {
        "meta": {"qqp_pairs": len(pairs), "test_pairs": len(test_pairs), "tune_pairs": len(tune_pairs),
                 "split": f"sha256('{SPLIT_SALT}'|a|b) first byte odd -> test",
                 "verifier_rules": verifier.rules, "verifier_vector_threshold": verifier.vector_threshold,
                 "embedding_model": "all-MiniLM-L6-v2"},
        "qqp_test": qqp_table(test_pairs, sims[test], None) + qqp_table(test_pairs, sims[test], verifier),
        "gptcache": gptcache_table(args.data, cache_dir, verifier),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["qqp_test"]:
        log.info("QQP test  t=%.2f verifier=%-5s hits=%5d precision=%.3f recall=%.3f false-hit-rate=%.4f",
                 row["threshold"], row["verifier"], row["hits"], row["precision"], row["recall"], row["false_hit_rate"])
    for row in result["gptcache"]:
        log.info("GPTCache  t=%.2f verifier=%-5s correct=%4d wrong=%3d miss=%4d", row["threshold"], row["verifier"],
                 row["correct_hits"], row["wrong_hits"], row["misses"])
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
