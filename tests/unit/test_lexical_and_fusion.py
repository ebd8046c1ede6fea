"""BM25 (bm25s), rank/score fusion and the store's hybrid search on a tiny real FAISS index."""

from __future__ import annotations

import numpy as np
import pytest

from common.records import Chunk
from index import store
from index.fusion import fuse, rrf, score_fusion
from index.lexical import Bm25Index, terms
from index.store import IndexStore


def test_bm25_stems_and_ranks_the_rarer_term_higher():
    docs = ["the for statement iterates over a sequence", "sequence types: list, tuple, range",
            "indexing a sequence", "the with statement and context managers"]
    index = Bm25Index(docs)
    assert [row for row, _ in index.top("indexes", 5)] == [2]  # "indexes" and "indexing" share a stem
    top = index.top("with sequence", 5)
    assert top[0][0] == 3  # "with" occurs once, "sequence" three times: the rare term decides
    assert {row for row, _ in top} == {0, 1, 2, 3} and all(s > 0 for _, s in top)
    assert index.top("zebra", 5) == [] and index.top("", 5) == []


def test_bm25_keeps_python_keywords_a_generic_stop_list_drops():
    assert terms("What does the with statement do?") == ["with", "statement"]
    assert Bm25Index(["with blocks", "for loops"]).top("with", 2)[0][0] == 0


def test_bm25_top_n_is_sorted_and_bounded():
    index = Bm25Index([f"apple {'pear ' * i}" for i in range(30)])
    top = index.top("apple", 7)
    assert len(top) == 7 and [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert top[0][0] == 0  # the shortest document: BM25 length normalization
    assert len(Bm25Index([]).scores("apple")) == 0


def test_rrf_rewards_agreement_and_is_deterministic():
    fused = rrf([[(1, 9.0), (2, 8.0), (3, 7.0)], [(3, 1.0), (2, 0.5), (4, 0.1)]], k=60)
    # 3 (ranks 3 and 1) edges 2 (ranks 2 and 2): 1/63 + 1/61 > 2/62; then the single-list rows
    assert [r for r, _ in fused] == [3, 2, 1, 4]
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)
    with pytest.raises(ValueError):
        rrf([[(1, 1.0)]], k=0)


def test_score_fusion_weight_moves_between_the_lists():
    dense, lexical = [(1, 0.9), (2, 0.1)], [(2, 12.0), (1, 2.0)]
    assert score_fusion(dense, lexical, 1.0)[0][0] == 1
    assert score_fusion(dense, lexical, 0.0)[0][0] == 2
    with pytest.raises(ValueError):
        fuse(dense, lexical, method="score", weight=1.5)
    with pytest.raises(ValueError):
        fuse(dense, lexical, method="max")  # type: ignore[arg-type]


def test_hybrid_search_finds_what_either_list_finds_with_true_cosines(tmp_path):
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(40, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    texts = [f"filler text number {i}" for i in range(40)]
    texts[33] = "the walrus operator assigns inside an expression"
    chunks = [Chunk(id=f"c{i}", doc_id=f"d{i}", title="t", text=t) for i, t in enumerate(texts)]
    store.write(tmp_path / "idx", chunks, vecs, embedding_model="m", index_type="flat", chunk_size=100,
                chunk_overlap=0, source="test")
    loaded = IndexStore.load(tmp_path / "idx", embedding_model="m")
    hits = loaded.search_hybrid(vecs[5], "walrus operator", 5, depth=5, fusion="rrf")
    ids = [h.chunk.id for h in hits]
    assert "c5" in ids and "c33" in ids  # the dense best and the only lexical match
    for h in hits:  # every hit carries its real cosine, whichever list found it
        row = int(h.chunk.id[1:])
        assert h.dense_score == pytest.approx(float(vecs[row] @ vecs[5]), abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    np.testing.assert_allclose(loaded.vectors([33, 5]), vecs[[33, 5]], atol=1e-6)  # stored rows, in the order asked
