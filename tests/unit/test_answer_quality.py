"""evals/answer_quality.py's bookkeeping: what a cached answer is keyed by, and the cascade
threshold it calibrates on the tune split and applies to the report split."""

from __future__ import annotations

import pytest

from evals.answer_quality import cache_key, calibrate_cascade, calibrate_router
from pipelines.config import GenerationConfig

SET = {"RAGROUTE_SMALL_ENGINE": "extractive", "RAGROUTE_CASCADE_SIGNAL": "coverage", "RAGROUTE_TOP_K": "2"}


def test_a_fixed_tiers_answers_are_keyed_by_its_own_settings_and_the_rest_by_every_tier():
    cfg = GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_SMALL_ENGINE": "extractive"})
    default = GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu"})
    # large's answers do not depend on the small tier or on the cascade's signal ...
    assert cache_key("large", cfg, SET) == cache_key("large", default, {"RAGROUTE_TOP_K": "2"})
    # ... but on a setting of the query path, which every mode's key carries
    assert cache_key("large", cfg, SET) != cache_key("large", cfg, {})
    assert "RAGROUTE_TOP_K=2" in cache_key("small", cfg, SET)
    cascade = cache_key("cascade", cfg, SET)
    assert "small:extractive" in cascade and "large:llamacpp" in cascade and "RAGROUTE_CASCADE_SIGNAL=coverage" in cascade
    assert cache_key("small", cfg, SET) != cache_key("small", default, {"RAGROUTE_TOP_K": "2"})


def rows(split: str, n: int) -> list[dict]:
    """Questions where a low-coverage quote scores 0 and the large tier 1, a high-coverage one
    scores 1 and the large tier 1: escalating exactly the low ones keeps all of large's F1."""
    out = []
    for i in range(n):
        low = i % 3 == 0
        qid = f"{split}{i}"
        out.append({"id": qid, "mode": "small", "split": split, "coverage": 0.25 if low else 0.9,
                    "f1": 0.0 if low else 1.0})
        out.append({"id": qid, "mode": "large", "split": split, "f1": 1.0})
    return out


def test_the_cascade_threshold_is_chosen_on_the_tune_split_and_applied_to_the_report_split():
    cal = calibrate_cascade(rows("tune", 30) + rows("report", 12), ["small", "large"], quality=1.0)
    assert 0.25 < cal["threshold"] <= 0.9
    assert cal["tune"] == {"n": 30, "large_share": pytest.approx(1 / 3, abs=1e-3), "f1": 1.0, "f1_share_of_large": 1.0}
    assert cal["report"]["n"] == 12 and cal["report"]["large_share"] == pytest.approx(1 / 3, abs=1e-3)
    assert cal["report"]["f1_share_of_large"] == 1.0
    assert cal["swapped"]["tune"]["f1_share_of_large"] == 1.0


def test_no_calibration_without_both_tiers_answers():
    assert calibrate_cascade([r for r in rows("tune", 6) + rows("report", 6) if r["mode"] == "small"],
                             ["small", "large"]) is None


def test_the_router_threshold_sends_large_only_what_small_gets_wrong_and_reports_the_split_at_half():
    # "Why ..." scores high on the heuristic (reasoning), "What is ..." low (factoid); the small
    # tier gets the factoid ones right and the reasoning ones wrong
    texts, out = {}, []
    for split, n in (("tune", 20), ("report", 10)):
        for i in range(n):
            hard = i % 2 == 0
            qid = f"{split}{i}"
            texts[qid] = f"Why does the loop {i} stop early and what follows?" if hard else f"What is item {i}?"
            out += [{"id": qid, "mode": "small", "split": split, "f1": 0.0 if hard else 1.0},
                    {"id": qid, "mode": "large", "split": split, "f1": 1.0}]
    cal = calibrate_router(out, ["small", "large"], texts, quality=1.0)
    assert cal["report"] == {"n": 10, "large_share": 0.5, "f1": 1.0, "f1_share_of_large": 1.0}
    assert cal["tune"]["large_share"] == 0.5 and 0.2 < cal["threshold"] <= 0.53  # the "Why" score, 0.525
    assert cal["at_0.5"]["report"]["large_share"] == 0.5  # the gpu default splits them the same way here
    # a small tier wrong on everything: only sending every question to large keeps its F1
    wrong = [{**r, "f1": 0.0} if r["mode"] == "small" else r for r in out]
    assert calibrate_router(wrong, ["small", "large"], texts, quality=0.95)["report"]["large_share"] == 1.0
    assert calibrate_router([r for r in out if r["mode"] == "small"], ["small", "large"], texts) is None
