"""`ragroute router train/calibrate/info` with the real embedding model, and loading the
artifact the way the Routing service does (manifest, sha256, embedding model and dimension)."""

from __future__ import annotations

import json

import pytest

from common.errors import ArtifactError
from pipelines import models
from pipelines.cli import main
from pipelines.config import CascadeConfig, RoutingConfig
from pipelines.query.route import QueryFeatures, decide, load_router
from pipelines.routing.artifact import MANIFEST, RouterArtifact
from tests import routing_data

UNSEEN_HARD = "Explain step by step why consensus protocols stall under partitions, and compare Raft with Paxos."
UNSEEN_EASY = "What is a lighthouse?"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("router")
    return routing_data.trained_router(tmp), tmp / "labelled.jsonl"


def test_train_writes_a_verified_artifact_with_its_provenance(trained):
    directory, data = trained
    m = json.loads((directory / MANIFEST).read_text())
    assert m["router"] == "learned" and m["method"] == "knn+ridge"
    assert m["embedding_model"] == "all-MiniLM-L6-v2" and m["dimension"] == 384
    assert m["training"]["n"] == len(routing_data.rows()) and len(m["training"]["data_sha256"]) == 64
    assert m["metrics"]["cross_validated"]["auc"] > 0.9  # templates this distinct are easy to tell apart
    assert m["calibration"]["target"] == "quality" and m["calibration"]["scored"] == "5-fold cross-validated"
    assert set(m["files"]) == {"weights.npz"}


def test_the_service_loads_it_and_routes_unseen_questions(trained, embedder):
    directory, _ = trained
    loaded = load_router(RoutingConfig(artifact=directory, router="learned"),
                         dimension=models.embedder_dimension("all-MiniLM-L6-v2"))
    assert loaded.router.name == "learned" and "calibrated for quality=0.95" in loaded.source
    hard, easy = embedder.encode([UNSEEN_HARD, UNSEEN_EASY])
    d_hard = decide(loaded.router, UNSEEN_HARD, QueryFeatures(query_vector=hard.tolist()), loaded.threshold)
    d_easy = decide(loaded.router, UNSEEN_EASY, QueryFeatures(query_vector=easy.tolist()), loaded.threshold)
    assert d_hard.score > d_easy.score
    assert (d_hard.tier, d_easy.tier) == ("large", "small")


def test_calibrate_to_a_large_share_rewrites_the_threshold(trained, tmp_path, capsys):
    directory, data = trained
    copy = tmp_path / "copy"
    RouterArtifact.load(directory).save(copy)
    assert main(["router", "calibrate", str(copy), "--data", str(data), "--large-share", "0.2"]) == 0
    m = RouterArtifact.load(copy).manifest
    assert m.calibration["target"] == "large_share" and m.calibration["large_share"] <= 0.2
    assert main(["router", "info", str(copy)]) == 0
    assert '"large_share"' in capsys.readouterr().out


def test_a_heuristic_artifact_can_be_calibrated_too(trained, tmp_path):
    _, data = trained
    assert main(["router", "calibrate", str(tmp_path / "h"), "--router", "heuristic", "--data", str(data),
                 "--quality", "1.0"]) == 0
    loaded = load_router(RoutingConfig(artifact=tmp_path / "h", router="heuristic", router_set=True))
    assert loaded.router.name == "heuristic" and loaded.threshold == RouterArtifact.load(tmp_path / "h").manifest.threshold


def test_an_artifact_for_another_embedding_model_is_refused_at_load(trained):
    directory, _ = trained
    with pytest.raises(ArtifactError, match="retrain the router for that model"):
        load_router(RoutingConfig(artifact=directory, router="learned", embed_model="BAAI/bge-small-en-v1.5"))


def test_bad_training_data_exits_with_the_line_named(tmp_path, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "small_score": 1}\n')
    assert main(["router", "train", "--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "bad.jsonl:1: needs either small_score and large_score, or small_ok" in caplog.text
    assert not (tmp_path / "r").exists()


def test_calibrate_a_routed_cascade_from_answers(trained, tmp_path, capsys):
    """`router calibrate --cascade --start routed`: the real learned router scores each question;
    hard ones need the large tier, and an easy one whose small answer shows a problem (selfcheck
    0.5) is wrong. Calibrated for 100% of large-only quality, hard questions start at the large
    tier and only answers with a problem escalate."""
    directory, _ = trained
    copy = tmp_path / "copy"
    RouterArtifact.load(directory).save(copy)
    rows = []
    for i, r in enumerate(routing_data.rows()):
        unsure = r["small_score"] == 1 and i % 3 == 0
        rows.append({**r, "small_score": 0 if unsure else r["small_score"], "selfcheck": 0.5 if unsure else 1.0})
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["router", "calibrate", str(copy), "--cascade", "--start", "routed", "--signal", "selfcheck",
                 "--data", str(data), "--quality", "1.0"]) == 0
    assert "routed cascade: start at large when the router score >=" in capsys.readouterr().out
    c = RouterArtifact.load(copy).manifest.cascade
    assert (c.signal, c.threshold, c.start) == ("selfcheck", 1.0, "routed")
    assert c.calibration["quality"] == c.calibration["large_only"]
    hard = sum(r["large_score"] > r["small_score"] and r["selfcheck"] == 1.0 for r in rows) / len(rows)
    escalated = sum(r["selfcheck"] < 1.0 for r in rows) / len(rows)
    # the hard questions go large by the router, the unsure easy ones by the self-check: nothing else
    assert c.calibration["large_share"] == pytest.approx(hard + escalated, abs=1e-6)
    assert c.calibration["escalated"] == pytest.approx(escalated, abs=1e-6)
    loaded = CascadeConfig.from_env({"RAGROUTE_ROUTER_PATH": str(copy)})
    assert (loaded.start, loaded.route_threshold) == ("routed", c.route_threshold)


def test_routed_calibration_needs_the_questions_and_a_cascade(trained, tmp_path):
    directory, _ = trained
    data = tmp_path / "answers.jsonl"
    data.write_text('{"selfcheck": 1.0, "small_score": 1, "large_score": 1}\n' * 10)
    with pytest.raises(SystemExit, match="needs the question"):
        main(["router", "calibrate", str(directory), "--cascade", "--start", "routed", "--signal", "selfcheck",
              "--data", str(data), "--quality", "1.0"])
    with pytest.raises(SystemExit, match="add --cascade"):
        main(["router", "calibrate", str(directory), "--start", "routed", "--data", str(data), "--quality", "1.0"])
