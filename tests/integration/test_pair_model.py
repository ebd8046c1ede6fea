"""The verifier's pair model for real: the shipped cross-encoder adapters on the packaged
MiniLM load only when their sha256 matches, score symmetrically, and tell paraphrases from
near misses; a short fine-tuning run writes adapters that load back."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from common.errors import ArtifactError
from pipelines import models
from pipelines.query.cache import pairmodel
from pipelines.query.cache.verify import WEIGHTS_FILE, HitVerifier


@pytest.fixture(scope="module")
def shipped():
    spec = json.loads(WEIGHTS_FILE.read_text())["model"]["pair_model"]
    return pairmodel.PairModel(pairmodel.WEIGHTS_FILE, spec["sha256"], spec["rank"])


def test_shipped_pair_model_scores_both_orders_alike_and_ranks_paraphrases_above_near_misses(shipped):
    pairs = [("How do I lose weight fast?", "What is the fastest way to lose weight?"),
             ("What is the fastest way to lose weight?", "How do I lose weight fast?"),
             ("How do I reverse a list in Python?", "How do I reverse a string in Python?")]
    z = shipped.logits(pairs)
    assert z[0] == pytest.approx(z[1], abs=1e-4)  # the mean of both orders: symmetric by construction
    assert z[0] > 0 > z[2]


def test_tampered_or_misshapen_pair_model_is_refused(tmp_path, shipped):
    spec = json.loads(WEIGHTS_FILE.read_text())["model"]["pair_model"]
    bad = tmp_path / "pair.npz"
    blob = bytearray(pairmodel.WEIGHTS_FILE.read_bytes())
    blob[-100] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="sha256"):
        pairmodel.PairModel(bad, spec["sha256"], spec["rank"])
    np.savez(bad, head_weight=np.zeros((1, 384), dtype=np.float32))  # right file format, wrong tensors
    with pytest.raises(ArtifactError, match="do not fit"):
        pairmodel.PairModel(bad, models.sha256_file(bad), spec["rank"])
    # the settings file points at the tensors by name next to it: a copy without them fails clearly
    shutil.copy(WEIGHTS_FILE, tmp_path / "verifier.json")
    with pytest.raises(ArtifactError, match="cannot read the verifier's pair model"):
        HitVerifier.load(tmp_path / "verifier.json")


def test_the_shipped_verifier_runs_the_pair_model_and_quotes_it(embedder):
    v = HitVerifier.load(embedding_model="all-MiniLM-L6-v2")
    assert v.pair is not None
    cached, query = "How can I improve my English speaking skills?", "What can I do to speak English better?"
    a, b = embedder.encode([cached, query])
    verdict = v.check(cached, query, float(a @ b), a, b)
    assert verdict.accept and "pair model +" in verdict.reason
    # a configured cut (RAGROUTE_CACHE_ACCEPT_PROBABILITY) replaces the pair model's calibrated one
    strict = HitVerifier.load(embedding_model="all-MiniLM-L6-v2", accept_probability=min(1.0, verdict.probability + 0.01))
    assert strict.pair is not None and not strict.check(cached, query, float(a @ b), a, b).accept


def test_fine_tuning_writes_adapters_that_load_back(tmp_path):
    pairs = [("How do I learn Python?", "What is the best way to learn Python?"),
             ("How do I learn Python?", "How do I cook rice?")] * 8
    labels = [True, False] * 8
    out = tmp_path / "pair.npz"
    sha = pairmodel.train(pairs, labels, out, epochs=2, batch_size=8, lr=2e-3)
    model = pairmodel.PairModel(out, sha)
    z = model.logits(pairs[:2])
    assert z.shape == (2,) and z[0] > z[1]  # 4 steps on a toy set: it has learnt which is which
    assert sha == models.sha256_file(out) and out.stat().st_size < 3_000_000
    # the same data and seed give the same file (the shipped one can be rebuilt and checked)
    assert pairmodel.train(pairs, labels, tmp_path / "again.npz", epochs=2, batch_size=8, lr=2e-3) == sha
