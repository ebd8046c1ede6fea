"""Semantic-cache precision: plain vector threshold vs threshold + hit verifier.

    python -m evals.cache_verifier                          # evaluate the shipped verifier
    python -m evals.cache_verifier --train                  # refit it on the QQP tune split first (~20 min)
    python -m evals.cache_verifier --train --keep-pair-model   # refit all but the pair model (~1 min)

Data (never copied into the repo; default ../shared/data/cache, or --data / RAGROUTE_DATA):
- qqp-pairs.jsonl: Quora question pairs labelled duplicate / not. Split deterministically by
  a hash of the pair into a tune half (verifier fitting and threshold choice) and a test
  half (every number reported for QQP comes from the test half). The tune half is split
  again: 85% fit the features' logistic regression and the pair model, 15% (calibration)
  fit how the two are weighed and the acceptance cut, on scores neither was trained on.
- gptcache-mock-pairs.json: GPTCache's benchmark: store every "origin", query every
  "similar"; a hit is correct when the best match is the pair's own origin.

Writes evals/out/cache_verifier.json (and, with --train, pipelines/query/cache/verifier.json and
verifier-pair.npz). Every table is reported for the shipped verifier with the pair model
("verifier") and without it ("features only", = RAGROUTE_CACHE_PAIR_MODEL=off).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from evals.serving import ROOT
from pipelines.query.cache.verify import FORMAT_VERSION, WEIGHTS_FILE, HitVerifier

log = logging.getLogger("evals.cache_verifier")

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.95)
TRAIN_FLOOR = 0.80  # the verifier only ever sees candidates above the vector threshold
TARGET_RECALL = 0.42  # of all duplicates, on the tune split: a margin over the 0.40 target on test
SPLIT_SALT = "ragroute-qqp-split-v1"
CALIBRATION_BYTE = 38  # 38/256 = 15% of the tune half calibrates the stack
PAIR_EPOCHS = 2.0


def default_data() -> Path:
    return Path(os.environ.get("RAGROUTE_DATA", ROOT.parent / "shared" / "data"))


def _digest(a: str, b: str) -> bytes:
    return hashlib.sha256(f"{SPLIT_SALT}\0{a}\0{b}".encode()).digest()


def in_test_split(a: str, b: str) -> bool:
    return _digest(a, b)[0] % 2 == 1


def in_calibration_split(a: str, b: str) -> bool:
    """~15% of the tune half (second hash byte < 38 of 256)."""
    return _digest(a, b)[1] < CALIBRATION_BYTE


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


VETOES = {"antonyms": 0.0, "numbers": 0.0, "negation": 0.0}  # near misses rejected whatever QQP says
L2_GRID = (300.0, 1000.0, 3000.0, 10000.0)  # on the 768 embedding interactions (the few named features: 1)
L2_NAMED = 1.0
SURE_GRID = (0.95, 0.96, 0.97, 0.98, 0.99)


def features(pairs: list[dict], sims: np.ndarray, vecs: dict[str, np.ndarray]) -> np.ndarray:
    """[named pair features, embedding interactions] per pair (what the scorer reads)."""
    from pipelines.query.cache.features import embedding_features, pair_features

    return np.array([np.concatenate([pair_features(p["a"], p["b"], float(s)),
                                     embedding_features(vecs[p["a"]], vecs[p["b"]])])
                     for p, s in zip(pairs, sims, strict=True)])


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (x already standardised; ``l2``:
    the penalty per column)."""
    n, d = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.append(l2, 0.0)  # no penalty on the bias
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(a @ w)))
        grad = a.T @ (p - y) + reg * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w[:-1], float(w[-1])


def operating_point(prob: np.ndarray, y: np.ndarray, dup_total: int, target_recall: float) -> tuple[float, float]:
    """(precision, probability cut) of the strictest cut whose hits still reach the recall target."""
    order = np.argsort(-prob)
    tp = np.cumsum(y[order])
    reach = np.flatnonzero(tp / dup_total >= target_recall)
    if not len(reach):
        return float(tp[-1] / len(tp)), float(prob[order[-1]])
    i = int(reach[0])
    return float(tp[i] / (i + 1)), float(prob[order[i]])


def fit_features(fit: list[dict], sims: np.ndarray, vecs: dict[str, np.ndarray], seed: int = 0) -> tuple:
    """The features' logistic regression on the fit pairs above the cosine floor, after the
    vetoes: (scorer, cross-validated grid, the L2 picked, pairs above the floor, vetoed)."""
    from pipelines.query.cache.features import FEATURES
    from pipelines.query.cache.verify import PairScorer
    from pipelines.routing.train import folds

    verifier = HitVerifier(VETOES, TRAIN_FLOOR)
    floor = sims >= TRAIN_FLOOR
    cand = [p for p, k in zip(fit, floor) if k]
    y = np.array([p["duplicate"] for p in cand], dtype=float)
    vetoed = np.array([bool(verifier.reasons(p["a"], p["b"])) for p in cand])
    x = features(cand, sims[floor], vecs)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    dup_total = int(sum(p["duplicate"] for p in fit))
    keep = ~vetoed

    def penalty(l2: float) -> np.ndarray:
        return np.r_[np.full(len(FEATURES), L2_NAMED), np.full(z.shape[1] - len(FEATURES), l2)]

    log.info("fit: %d pairs above cosine %.2f, %d vetoed by %s (duplicate rate among them %.3f vs %.3f)",
             len(cand), TRAIN_FLOOR, int(vetoed.sum()), sorted(VETOES), y[vetoed].mean(), y.mean())
    # choose the L2 strength by 5-fold CV precision at the recall target
    grid = {}
    for l2 in L2_GRID:
        oof = np.zeros(len(y))
        for fold in folds(len(y), 5, seed):
            rest = np.setdiff1d(np.arange(len(y)), fold)
            w, b = fit_logistic(z[rest], y[rest], penalty(l2))
            oof[fold] = 1 / (1 + np.exp(-(z[fold] @ w + b)))
        prec, cut = operating_point(np.where(keep, oof, -1.0), y, dup_total, TARGET_RECALL)
        grid[l2] = (prec, cut)
        log.info("l2=%g: cross-validated precision %.4f at fit recall %.2f (P >= %.3f)", l2, prec, TARGET_RECALL, cut)
    l2 = max(grid, key=lambda k: grid[k][0])
    prec, cut = grid[l2]
    w, b = fit_logistic(z, y, penalty(l2))
    sure = sure_cosine(sims[floor], y, keep, prec)
    return PairScorer(mean, scale, w, b, round(cut, 4), sure), grid, l2, len(cand), int(vetoed.sum())


def sure_cosine(cos: np.ndarray, y: np.ndarray, keep: np.ndarray, precision: float) -> float:
    """Near-identical wording is accepted on the cosine alone (after the vetoes) from the lowest
    cosine whose pairs are at least as precise as the learned check's accepted ones."""
    sure = next((c for c in SURE_GRID if (m := keep & (cos >= c)).any() and y[m].mean() >= precision), 1.0)
    log.info("cosine alone accepts from %.2f (precision above it: %s, learned check: %.3f)", sure,
             f"{y[keep & (cos >= sure)].mean():.3f}" if (keep & (cos >= sure)).any() else "-", precision)
    return sure


def fit_stack(cal: list[dict], sims: np.ndarray, vecs: dict[str, np.ndarray], scorer, pair) -> dict:
    """Weigh the features' logit and the pair model's on the calibration pairs (which neither
    was fitted on), and pick the acceptance cut there."""
    from pipelines.query.cache.features import embedding_features, pair_features

    verifier = HitVerifier(VETOES, TRAIN_FLOOR)
    floor = sims >= TRAIN_FLOOR
    cand = [p for p, k in zip(cal, floor) if k]
    y = np.array([p["duplicate"] for p in cand], dtype=float)
    keep = np.array([not verifier.reasons(p["a"], p["b"]) for p in cand])
    zf = np.array([scorer.logit(pair_features(p["a"], p["b"], float(c)), embedding_features(vecs[p["a"]], vecs[p["b"]]))[0]
                   for p, c in zip(cand, sims[floor], strict=True)])
    zp = pair.logits([(p["a"], p["b"]) for p in cand])
    x = np.stack([zf, zp], axis=1)
    w, b = fit_logistic(x[keep], y[keep], np.full(2, 1.0))
    prob = 1 / (1 + np.exp(-(x @ w + b)))
    dup_total = int(sum(p["duplicate"] for p in cal))
    prec, cut = operating_point(np.where(keep, prob, -1.0), y, dup_total, TARGET_RECALL)
    feat_prec, _ = operating_point(np.where(keep, zf, -1e9), y, dup_total, TARGET_RECALL)
    pair_prec, _ = operating_point(np.where(keep, zp, -1e9), y, dup_total, TARGET_RECALL)
    log.info("calibration: %d pairs above the floor; precision at recall %.2f: features %.3f, pair model %.3f, "
             "both %.3f (P >= %.3f; weights %.3f / %.3f, bias %.3f)", len(cand), TARGET_RECALL, feat_prec,
             pair_prec, prec, cut, w[0], w[1], b)
    return {"features_weight": round(float(w[0]), 6), "pair_weight": round(float(w[1]), 6), "bias": round(b, 6),
            "accept_probability": round(cut, 4), "sure_cosine": sure_cosine(sims[floor], y, keep, prec),
            "calibration": {"pairs_above_floor": len(cand), "precision_features": round(feat_prec, 4),
                            "precision_pair_model": round(pair_prec, 4), "precision_both": round(prec, 4)}}


def train(tune: list[dict], sims: np.ndarray, vecs: dict[str, np.ndarray], data_hash: str, *,
          keep_pair_model: bool = False, seed: int = 0) -> dict:
    """Fit the verifier on the tune split: the features and the pair model on its fit part, how
    they are weighed (and the cut) on its calibration part."""
    from pipelines import models
    from pipelines.query.cache import pairmodel
    from pipelines.query.cache.features import FEATURES

    cal_mask = np.array([in_calibration_split(p["a"], p["b"]) for p in tune])
    fit = [p for p, c in zip(tune, cal_mask) if not c]
    cal = [p for p, c in zip(tune, cal_mask) if c]
    log.info("tune: %d pairs -> fit %d, calibration %d", len(tune), len(fit), len(cal))
    scorer, grid, l2, n_cand, n_vetoed = fit_features(fit, sims[~cal_mask], vecs, seed)
    pair_spec = {"base_model": pairmodel.BASE_MODEL, "base_sha256": models.PACKAGED_EMBEDDERS[pairmodel.BASE_MODEL][3],
                 "rank": pairmodel.RANK, "epochs": PAIR_EPOCHS, "trained_on": f"fit part ({len(fit)} pairs)",
                 "file": pairmodel.WEIGHTS_FILE.name}
    if keep_pair_model:
        old = json.loads(WEIGHTS_FILE.read_text())["model"].get("pair_model") or {}
        if {k: old.get(k) for k in pair_spec} != pair_spec:
            raise SystemExit(f"--keep-pair-model: the shipped pair model was trained as {old or 'nothing'}, "
                             f"this run needs {pair_spec}; train it (drop --keep-pair-model)")
        sha = models.sha256_file(pairmodel.WEIGHTS_FILE)
    else:
        sha = pairmodel.train([(p["a"], p["b"]) for p in fit], [p["duplicate"] for p in fit], pairmodel.WEIGHTS_FILE,
                              epochs=PAIR_EPOCHS, seed=seed,
                              progress=lambda i, n, loss: log.info("pair model step %d/%d loss %.3f", i, n, loss))
    pair = pairmodel.PairModel(pairmodel.WEIGHTS_FILE, sha)
    stack = fit_stack(cal, sims[cal_mask], vecs, scorer, pair)
    calibration = stack.pop("calibration")
    model = {"rules": VETOES, "vector_threshold": TRAIN_FLOOR, "scorer": scorer.to_json(),
             "pair_model": pair_spec | {"sha256": sha} | stack}
    body = json.dumps(model, sort_keys=True).encode()
    named = dict(zip(FEATURES, np.round(scorer.weights[: len(FEATURES)], 3).tolist(), strict=True))
    return {
        "manifest": {
            "format_version": FORMAT_VERSION,
            "embedding_model": "all-MiniLM-L6-v2",
            "dimension": int(len(next(iter(vecs.values())))),
            "training_data": "qqp-pairs.jsonl (tune half: fit part + calibration part)",
            "training_data_sha256": data_hash,
            "split_salt": SPLIT_SALT,
            "calibration_byte": CALIBRATION_BYTE,
            "train_floor": TRAIN_FLOOR,
            "fit_pairs_above_floor": n_cand,
            "vetoed_on_fit": n_vetoed,
            "target_recall": TARGET_RECALL,
            "l2": {"named_features": L2_NAMED, "embedding_interactions": l2},
            "cross_validated": {str(k): {"precision": round(v[0], 4), "accept_probability": round(v[1], 4)}
                                for k, v in grid.items()},
            "calibration": calibration,
            "named_feature_weights": named,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model_sha256": hashlib.sha256(body).hexdigest(),
        },
        "model": model,
    }


def qqp_table(pairs: list[dict], sims: np.ndarray, vecs: dict[str, np.ndarray], verifier: HitVerifier | None,
              label: str) -> list[dict]:
    dup = np.array([p["duplicate"] for p in pairs])
    accepted = np.ones(len(pairs), dtype=bool)
    if verifier is not None:
        idx = np.flatnonzero(sims >= min(THRESHOLDS))
        found = verifier.check_many([(pairs[i]["a"], pairs[i]["b"], float(sims[i]), vecs[pairs[i]["a"]],
                                      vecs[pairs[i]["b"]]) for i in idx])
        accepted[idx] = [v.accept for v in found]
    rows = []
    for t in THRESHOLDS:
        hit = (sims >= t) & accepted
        tp, fp = int((hit & dup).sum()), int((hit & ~dup).sum())
        rows.append({"threshold": t, "verifier": label, "hits": tp + fp,
                     "precision": round(tp / max(1, tp + fp), 4), "recall": round(tp / max(1, dup.sum()), 4),
                     "false_hit_rate": round(fp / max(1, (~dup).sum()), 4)})
    return rows


def equal_recall(pairs: list[dict], sims: np.ndarray, vecs: dict[str, np.ndarray], verifiers: dict[str, HitVerifier],
                 recalls: tuple[float, ...] = (0.30, 0.40, 0.50)) -> list[dict]:
    """Precision of a plain cosine threshold and of threshold + verifier at the same recall:
    the plain one sweeps the cosine, the verifier its acceptance probability (above its floor;
    the pairs it accepts on the cosine alone count as accepted first)."""
    dup = np.array([p["duplicate"] for p in pairs], dtype=float)
    total = int(dup.sum())
    probs = {}
    for name, verifier in verifiers.items():
        prob = np.full(len(pairs), -1.0)
        idx = np.flatnonzero(sims >= verifier.vector_threshold)
        found = verifier.check_many([(pairs[i]["a"], pairs[i]["b"], float(sims[i]), vecs[pairs[i]["a"]],
                                      vecs[pairs[i]["b"]]) for i in idx])
        for i, v in zip(idx, found, strict=True):
            if sims[i] >= verifier.sure_cosine and v.accept:
                prob[i] = 2.0  # near-identical wording first
            elif v.probability is not None:  # None: vetoed
                prob[i] = v.probability
        probs[name] = prob
    rows = []
    for r in recalls:
        plain, cos_cut = operating_point(sims, dup, total, r)
        row = {"recall": r, "plain_precision": round(plain, 4), "plain_cosine": round(cos_cut, 4)}
        for name, prob in probs.items():
            prec, p_cut = operating_point(prob, dup, total, r)
            row[f"{name}_precision"] = round(prec, 4)
            row[f"{name}_probability"] = round(p_cut, 4)
        rows.append(row)
    return rows


LABEL_BUCKETS = (0.95, 0.98, 0.99)


def label_ceiling(pairs: list[dict], sims: np.ndarray) -> list[dict]:
    """How often QQP labels near-identical questions as duplicates: pairs whose text is the same
    after lower-casing and dropping punctuation and spacing, and pairs above high cosines. A
    check that judges meaning accepts these first, so their labelled-duplicate rate bounds the
    precision it can reach at any recall they cover."""
    dup = np.array([p["duplicate"] for p in pairs], dtype=bool)
    total = int(dup.sum())

    def norm(text: str) -> str:
        return re.sub(r"[\W_]+", " ", text.lower()).strip()

    buckets = {"identical text": np.array([norm(p["a"]) == norm(p["b"]) for p in pairs])}
    buckets |= {f"cosine >= {c:.2f}": sims >= c for c in LABEL_BUCKETS}
    return [{"pairs": name, "count": int(m.sum()), "labelled_duplicate": round(float(dup[m].mean()), 4) if m.any() else None,
             "recall_covered": round(float((dup & m).sum() / max(1, total)), 4)} for name, m in buckets.items()]


def gptcache_table(data: Path, cache_dir: Path, verifiers: dict[str, HitVerifier]) -> list[dict]:
    pairs = json.loads((data / "cache" / "gptcache-mock-pairs.json").read_text())
    origins = [p["origin"] for p in pairs]
    vecs = embed_all(sorted(set(origins) | {p["similar"] for p in pairs}), cache_dir)
    store = np.stack([vecs[o] for o in origins])
    best = []
    for p in pairs:
        sims = store @ vecs[p["similar"]]
        i = int(np.argmax(sims))
        best.append((i, float(sims[i])))
    rows = []
    for name, verifier in {"none": None, **verifiers}.items():
        accepted = [True] * len(pairs)
        if verifier is not None:
            found = verifier.check_many([(origins[i], p["similar"], sim, store[i], vecs[p["similar"]])
                                         for p, (i, sim) in zip(pairs, best, strict=True)])
            accepted = [v.accept for v in found]
        for t in THRESHOLDS:
            correct = wrong = miss = 0
            for p, (i, sim), ok in zip(pairs, best, accepted, strict=True):
                if sim < t or not ok:
                    miss += 1
                elif origins[i] == p["origin"]:
                    correct += 1
                else:
                    wrong += 1
            rows.append({"threshold": t, "verifier": name, "correct_hits": correct, "wrong_hits": wrong,
                         "misses": miss})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.cache_verifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data(), help="shared data folder (has cache/)")
    p.add_argument("--train", action="store_true",
                   help=f"refit the verifier and write {WEIGHTS_FILE.name} and the pair model (~20 min on 2 cores)")
    p.add_argument("--keep-pair-model", action="store_true",
                   help="with --train: keep the shipped pair model, refit the rest (~1 min)")
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
        artifact = train(tune_pairs, sims[~test], vecs, data_hash, keep_pair_model=args.keep_pair_model)
        WEIGHTS_FILE.write_text(json.dumps(artifact, indent=2) + "\n")
        log.info("wrote %s", WEIGHTS_FILE)
    verifiers = {"verifier": HitVerifier.load(), "features_only": HitVerifier.load(pair_model=False)}
    verifier = verifiers["verifier"]
    t0 = time.perf_counter()
    result = {
        "meta": {"qqp_pairs": len(pairs), "test_pairs": len(test_pairs), "tune_pairs": len(tune_pairs),
                 "split": f"sha256('{SPLIT_SALT}'|a|b) first byte odd -> test",
                 "verifier_rules": verifier.rules, "verifier_vector_threshold": verifier.vector_threshold,
                 "verifier_accept_probability": verifier.accept_probability,
                 "features_only_accept_probability": verifiers["features_only"].accept_probability,
                 "verifier_sure_cosine": verifier.sure_cosine,
                 "embedding_model": "all-MiniLM-L6-v2",
                 "pair_model": "all-MiniLM-L6-v2 cross-encoder (rank-8 LoRA), verifier-pair.npz"},
        "qqp_test": qqp_table(test_pairs, sims[test], vecs, None, "none") +
        [row for name, v in verifiers.items() for row in qqp_table(test_pairs, sims[test], vecs, v, name)],
        "qqp_test_at_equal_recall": equal_recall(test_pairs, sims[test], vecs, verifiers),
        "qqp_test_label_ceiling": label_ceiling(test_pairs, sims[test]),
        "gptcache": gptcache_table(args.data, cache_dir, verifiers),
    }
    log.info("tables in %.0f s", time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["qqp_test"]:
        log.info("QQP test  t=%.2f verifier=%-13s hits=%5d precision=%.3f recall=%.3f false-hit-rate=%.4f",
                 row["threshold"], row["verifier"], row["hits"], row["precision"], row["recall"], row["false_hit_rate"])
    for row in result["qqp_test_at_equal_recall"]:
        log.info("QQP test  recall %.2f: plain cosine precision %.3f, features only %.3f, verifier %.3f",
                 row["recall"], row["plain_precision"], row["features_only_precision"], row["verifier_precision"])
    for row in result["qqp_test_label_ceiling"]:
        log.info("QQP test  %-16s %5d pairs, labelled duplicate %s, %.1f%% of all duplicates", row["pairs"],
                 row["count"], row["labelled_duplicate"], 100 * row["recall_covered"])
    for row in result["gptcache"]:
        log.info("GPTCache  t=%.2f verifier=%-13s correct=%4d wrong=%3d miss=%4d", row["threshold"], row["verifier"],
                 row["correct_hits"], row["wrong_hits"], row["misses"])
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
