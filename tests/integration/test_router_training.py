"""`ragroute router train/calibrate/info` with the real embedding model, and loading the
artifact the way the Routing service does (manifest, sha256, embedding model and dimension)."""

from __future__ import annotations

import json

import pytest

from pipelines import models
from pipelines.cli import main
from pipelines.config import RoutingConfig
from pipelines.errors import ArtifactError
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
