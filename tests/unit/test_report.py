"""Results tables are generated from the evals' JSON (evals/report.py): a table in docs/ that
disagrees with the snapshot of the run it came from fails here."""

from __future__ import annotations

import json
import shutil

from evals import report


def test_every_results_table_in_the_docs_is_what_its_snapshot_renders():
    found = report.blocks()
    assert {name for _, name, _ in found} == set(report.REPORTS), "every report appears on a page"
    assert not report.differences(), report.differences()


def test_a_changed_number_in_a_table_or_in_its_json_is_caught(tmp_path):
    page = next(p for p, name, _ in report.blocks() if name == "admission")
    snapshots = tmp_path / "results"
    shutil.copytree(report.SNAPSHOTS, snapshots)
    copy = tmp_path / page.name
    copy.write_text(page.read_text())
    assert report.differences(snapshots, [copy]) == []

    data = json.loads((snapshots / "admission.json").read_text())
    level = next(iter(data["settings"]["admission on"].values()))
    level["undegraded_per_min"] += 1.0  # a re-run that measured something else
    (snapshots / "admission.json").write_text(json.dumps(data))
    assert report.differences(snapshots, [copy]) == [
        f"{page.name}: report admission differs from {snapshots / 'admission.json'} (run `make report`)"]

    shutil.copy(report.SNAPSHOTS / "admission.json", snapshots / "admission.json")
    text = copy.read_text()
    table = report._block("admission").search(text).group(2)
    copy.write_text(text.replace(table, table.replace("| 1 | on |", "| 1 | off |", 1)))  # a hand edit
    assert len(report.differences(snapshots, [copy])) == 1


def test_a_rendered_table_says_when_where_and_how_it_was_measured():
    data = json.loads((report.SNAPSHOTS / "admission.json").read_text())
    text = report.render("admission", data)
    assert text.startswith(f"*Measured {data['date']} on {data['machine']} with `python -m evals.admission")
    assert text.count("\n| ") == 1 + sum(len(levels) for levels in data["settings"].values())  # a row per run
