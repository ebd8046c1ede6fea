"""evals/retrieval.py on a tiny BEIR-layout folder: any such folder works (--data), and the
metrics are those of the rankings (a query that names its document's rare words finds it)."""

from __future__ import annotations

import json

import pytest

from evals import retrieval

DOCS = {
    "walrus": ("Assignment expressions", "The walrus operator := assigns a value inside an expression."),
    "gil": ("Global interpreter lock", "The GIL lets one thread execute Python bytecode at a time."),
    "venv": ("Virtual environments", "A venv isolates installed packages for one project directory."),
    "async": ("Coroutines", "An async function returns a coroutine that an event loop awaits."),
    "slots": ("Slots", "Declaring __slots__ removes the per-instance dictionary and saves memory."),
    "pickle": ("Serialization", "The pickle module serializes Python objects into a byte stream."),
}
QUERIES = {"q1": ("walrus operator assigns", "walrus"), "q2": ("pickle serializes objects", "pickle"),
           "q3": ("thread bytecode lock", "gil"), "q4": ("venv isolates packages", "venv"),
           "q5": ("slots dictionary memory", "slots"), "q6": ("coroutine event loop", "async")}


@pytest.fixture
def beir(tmp_path):
    data = tmp_path / "tiny"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, (t, x) in DOCS.items()))
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in QUERIES.items()))
    for split, ids in (("train", ("q1", "q2", "q3")), ("test", ("q4", "q5", "q6"))):
        (data / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{QUERIES[q][1]}\t1\n" for q in ids))
    return data


@pytest.mark.integration
def test_the_eval_runs_on_any_beir_folder_and_scores_the_rankings(beir, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGROUTE_HOME", str(tmp_path / "home"))
    out = tmp_path / "out.json"
    assert retrieval.main(["--data", str(beir), "--runs", "1", "--candidates", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["queries"] == 3 and result["index"]["document_count"] == 6
    assert set(result["quality"]) >= {"dense", "bm25", "rrf", "score", "score + near-duplicate filter (shipped)",
                                      "score + hybrid rerank"}
    bm25 = result["quality"]["bm25"]
    assert bm25["ndcg@10"] == pytest.approx(1.0) and bm25["mrr@10"] == pytest.approx(1.0)  # rare words match
    assert all(0.0 <= q["ndcg@10"] <= 1.0 and q["recall@100"] == pytest.approx(1.0)  # 6 documents: all found
               for q in result["quality"].values())
    assert set(result["latency"]) == {"embed", "dense", "bm25", "fuse (score)", "near-duplicate filter", "hybrid rerank"}
    assert 0 < result["params"]["rrf_k"] and 0 <= result["params"]["weight"] <= 1
    # The second run reuses the index built by the first (same corpus and parameters).
    built = sorted((tmp_path / "home" / "evals" / "retrieval").iterdir())
    assert retrieval.main(["--data", str(beir), "--runs", "1", "--candidates", "3", "--out", str(out)]) == 0
    assert sorted((tmp_path / "home" / "evals" / "retrieval").iterdir()) == built


@pytest.mark.integration
def test_a_set_with_one_split_is_tuned_on_one_half_and_reported_on_the_other(beir, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGROUTE_HOME", str(tmp_path / "home"))
    (beir / "qrels" / "train.tsv").unlink()
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items()))
    out = tmp_path / "out.json"
    assert retrieval.main(["--data", str(beir), "--tune-split", "half", "--runs", "1", "--candidates", "3",
                           "--out", str(out)]) == 0
    tune, report = retrieval.halves(retrieval.read_beir(beir, "test"))
    assert tune[0] and report[0] and not tune[0].keys() & report[0].keys()
    assert len(tune[0]) + len(report[0]) == 6 and json.loads(out.read_text())["queries"] == len(report[0])


def test_a_folder_without_the_split_is_refused_with_its_path(beir):
    with pytest.raises(SystemExit, match="qrels/dev.tsv"):
        retrieval.main(["--data", str(beir), "--split", "dev"])


@pytest.mark.integration
def test_the_reranker_experiment_trains_on_train_chooses_on_held_out_train_and_reports_test(beir, tmp_path,
                                                                                           monkeypatch):
    from evals import retrieval_rerank

    monkeypatch.setenv("RAGROUTE_HOME", str(tmp_path / "home"))
    out = tmp_path / "out.json"
    assert retrieval_rerank.main(["--data", str(beir), "--fit", "2", "--pool", "6", "--negatives", "3",
                                  "--candidates", "4", "--max-tokens", "64", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["queries"] == {"fit": 2, "hold": 1, "test": 3}
    assert result["training_groups"] == 2  # one relevant chunk per fit query, 5 others in a pool of 6
    assert result["blend_chosen"] in retrieval_rerank.BLENDS
    hold = result["hold_ndcg_by_blend"]  # the blend is the held-out queries' best (ties: the lower blend)
    assert hold[str(result["blend_chosen"])] == max(hold.values())
    shipped = result["quality"]["score fusion (shipped)"]
    assert shipped["recall@100"] == pytest.approx(1.0)  # 6 documents: every one is in the run
    assert len(result["quality"]) == 4 and result["rerank_ms"]["p50"] > 0
    with pytest.raises(SystemExit, match="leaves no train query"):
        retrieval_rerank.main(["--data", str(beir), "--fit", "3", "--out", str(out)])
