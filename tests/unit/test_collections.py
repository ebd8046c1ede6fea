"""Named collections over real FAISS index directories (index/collections.py)."""

from __future__ import annotations

import json

import pytest

from common.errors import NotFound
from index.collections import Collections
from index.store import IndexStore
from tests.indexes import make_index


@pytest.fixture
def served(tmp_path):
    make_index(tmp_path / "default-index", "demo")
    folder = tmp_path / "collections"
    make_index(folder / "handbook", "handbook")
    make_index(folder / "Bad Name", "bad")
    make_index(folder / "other-model", "other", model="m2")
    (folder / "not-an-index").mkdir()
    default = IndexStore.load(tmp_path / "default-index", embedding_model="m")
    return Collections(default, folder, embedding_model="m"), folder


def test_the_folder_serves_valid_collections_beside_the_default(served):
    collections, _ = served
    assert collections.names() == ["default", "handbook"]
    assert collections.get("handbook").chunks[0].doc_id == "handbook-doc0"
    assert collections.get("default").chunks[0].doc_id == "demo-doc0"
    rows = {c["name"]: c for c in collections.describe()}
    assert rows["handbook"]["vector_count"] == 3 and rows["handbook"]["source"] == "handbook"


def test_unknown_and_refused_collections_are_404s_that_say_why(served):
    collections, _ = served
    with pytest.raises(NotFound, match="'nope' is not a collection.*valid: default, handbook") as err:
        collections.get("nope")
    assert err.value.status == 404
    with pytest.raises(NotFound, match="refused: .*built with embedding model 'm2'"):
        collections.get("other-model")


def test_a_collection_built_while_serving_is_found_without_a_restart(served, monkeypatch):
    collections, folder = served
    monkeypatch.setattr("index.collections.RESCAN_S", 0.0)
    make_index(folder / "late", "late")
    assert collections.get("late").chunks[0].doc_id == "late-doc0"


def test_a_corrupt_collection_is_refused_alone(tmp_path):
    make_index(tmp_path / "d", "demo")
    make_index(tmp_path / "c" / "broken", "broken")
    manifest = json.loads((tmp_path / "c" / "broken" / "manifest.json").read_text())
    (tmp_path / "c" / "broken" / "chunks.jsonl").write_text("tampered\n")
    assert manifest["files"]
    collections = Collections(IndexStore.load(tmp_path / "d", embedding_model="m"), tmp_path / "c", embedding_model="m")
    assert collections.names() == ["default"]
    with pytest.raises(NotFound, match="does not match the sha256"):
        collections.get("broken")
