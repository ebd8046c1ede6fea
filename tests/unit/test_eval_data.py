"""The committed evaluation sets keep their documented shape (evals/data/README.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pydoc_data.topics

DATA = Path(__file__).resolve().parents[2] / "evals" / "data"


def test_the_cache_paraphrase_set_has_its_documented_shape():
    rows = [json.loads(line) for line in (DATA / "cache_paraphrases.jsonl").read_text().splitlines() if line]
    assert len(rows) >= 150
    for row in rows:
        assert set(row) == {"topic", "question", "rewordings", "near_misses"}, row
        assert 2 <= len(row["rewordings"]) <= 4 and 1 <= len(row["near_misses"]) <= 2, row["question"]
        assert row["question"] not in row["near_misses"] and not set(row["rewordings"]) & set(row["near_misses"])
    asked = Counter(t.lower() for r in rows for t in (r["question"], *r["rewordings"]))
    assert [t for t, n in asked.items() if n > 1] == []  # every question and rewording once
    # written against Python 3.11's 79 help topics; other versions add or drop a few
    topics, current = {r["topic"] for r in rows}, set(pydoc_data.topics.topics)
    assert len(topics - current) <= 3 and len(current - topics) <= 3, (topics - current, current - topics)


def test_cache_judge_pairs_every_rewording_and_near_miss_with_its_question():
    from evals.cache_judge import DATA, load_pairs

    items = [json.loads(line) for line in DATA.open() if line.strip()][:3]
    pairs = load_pairs(DATA, limit=3)
    assert len(pairs) == sum(len(i["rewordings"]) + len(i["near_misses"]) for i in items)
    assert {(p.question, p.other) for p in pairs if p.same} == \
        {(i["question"], r) for i in items for r in i["rewordings"]}
    assert {(p.question, p.other) for p in pairs if not p.same} == \
        {(i["question"], n) for i in items for n in i["near_misses"]}


def test_cache_judge_auc_counts_rewordings_above_near_misses_and_ties_half():
    import numpy as np

    from evals.cache_judge import auc

    same = np.array([True, True, False, False])
    assert auc(np.array([0.9, 0.8, 0.1, 0.2]), same) == 1.0
    assert auc(np.array([0.1, 0.2, 0.9, 0.8]), same) == 0.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), same) == 0.5
    assert auc(np.array([0.9, 0.1, 0.5, 0.0]), same) == 0.75  # 0.9 beats both; 0.1 beats one of two


def test_cache_judge_threshold_lets_through_at_most_the_allowed_share_of_near_misses():
    import numpy as np

    from evals.cache_judge import passed_at

    near = np.linspace(0.0, 0.99, 100)  # 100 near-misses: 2% allowed = 2 above the threshold
    rewordings = np.array([0.5, 0.975, 0.985, 1.0])
    scores = np.concatenate([rewordings, near])
    same = np.array([True] * 4 + [False] * 100)
    threshold, passed, through = passed_at(scores, same, 0.02)
    assert threshold == near[97] and through == 0.02
    assert passed == 0.75  # 0.975, 0.985 and 1.0 are above the third-highest near-miss (0.97); 0.5 is not


def test_the_qa_set_names_real_topics_differs_from_the_cache_set_and_grades_by_its_facts():
    from pydoc_data.topics import topics

    from evals import qa

    items = qa.load()
    assert len(items) >= 150 and len({i.id for i in items}) == len(items) == len({i.question for i in items})
    assert {i.topic for i in items} == set(topics)  # every help topic has a question
    assert all(i.topic in topics and i.answer and i.facts and all(i.facts) for i in items)
    halves = [qa.split(i) for i in items]
    assert 0.4 < halves.count("test") / len(items) < 0.6
    cache = DATA / "cache_paraphrases.jsonl"
    asked = {t.lower() for line in cache.read_text().splitlines() for row in [json.loads(line)]
             for t in (row["question"], *row["rewordings"], *row["near_misses"])}
    assert not {i.question.lower() for i in items} & asked  # not the cache's questions
    for item in items:  # its own gold answer, cited, is right
        assert qa.grade(item, item.answer, [item.doc_id]).right, item.id
    item = next(i for i in items if i.question == "What exception does a failing assert statement raise?")
    assert not qa.grade(item, "It raises ValueError.", [item.doc_id]).facts
    assert not qa.grade(item, "AssertionError. [1]", ["pydoc:raise"]).right  # the wrong source cited


def test_cache_judge_roc_passes_tied_scores_together():
    import numpy as np

    from evals.cache_judge import roc_points

    # a three-valued signal: rewordings listed first must not look better than their ties
    fp, tp = roc_points(np.array([2.0, 1.0, 2.0, 1.0, 0.0]), np.array([True, True, False, False, False]))
    assert list(zip(fp.round(3), tp.round(3))) == [(0.0, 0.0), (0.333, 0.5), (0.667, 1.0), (1.0, 1.0)]


def test_cache_judge_fit_separates_what_it_can():
    import numpy as np

    from evals.cache_judge import fit_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = x[:, 0] > 0  # the first feature decides, the second is noise
    coef, _ = fit_logistic(x, y)
    assert coef[0] > 2.0 and abs(coef[1]) < 0.5


def test_each_cached_question_has_one_labelled_neighbour_from_another_entry():
    import json

    from evals.cache_judge import DATA, NEIGHBOURS, load_neighbours

    items = [json.loads(line) for line in DATA.read_text().splitlines()]
    owner = {}
    for i, it in enumerate(items):
        for text in (it["question"], *it["rewordings"], *it["near_misses"]):
            owner.setdefault(text, set()).add(i)
    pairs = load_neighbours(NEIGHBOURS)
    assert [p.question for p in pairs] == [it["question"] for it in items]
    for i, p in enumerate(pairs):
        assert p.other in owner and i not in owner[p.other], p  # another entry's rewording or near-miss
        assert p.other not in {it["question"] for it in items}
        assert p.kind == "neighbour" and isinstance(p.same, bool)
    assert sum(p.same for p in pairs) == 21
    assert [p.question for p in load_neighbours(NEIGHBOURS, 2)] == [it["question"] for it in items[:2]]
