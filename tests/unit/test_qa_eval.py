"""evals/qa_answers.py's routing curve, as logic: the threshold is chosen on the tune half (the
fewest questions to large that keep 97% of large's right share) and reported on the test half."""

from __future__ import annotations

from evals.qa_answers import route_curve


def rows(split: str, scores_right: list[tuple[float, bool, bool]]) -> list[dict]:
    out = []
    for n, (score, small_right, large_right) in enumerate(scores_right):
        qid = f"{split}{n}"
        out.append({"id": qid, "mode": "auto", "split": split, "score": score, "tier": "large", "right": large_right})
        out.append({"id": qid, "mode": "small", "split": split, "score": None, "tier": "small", "right": small_right})
    return out


def test_the_threshold_is_chosen_on_tune_and_reported_on_test():
    # easy questions (low score) small gets right; hard ones only large does
    tune = rows("tune", [(0.1, True, True), (0.2, True, True), (0.8, False, True), (0.9, False, True)])
    test = rows("test", [(0.15, True, True), (0.85, False, True), (0.3, False, True), (0.95, False, False)])
    curve = route_curve(tune + test)
    assert curve["threshold"] == 0.8  # small below 0.8 keeps 100% of large's right share on tune
    assert curve["tune"] == {"large_share": 0.5, "right": 1.0}
    assert curve["test"] == {"large_share": 0.5, "right": 0.5}  # 0.3 went to small, wrongly; 0.95 large misses
    assert route_curve(tune) is None  # one half only: nothing to report on
