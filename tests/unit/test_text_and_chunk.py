from __future__ import annotations

import pytest

from common.text import content_id, normalize_query, query_hash, tokenize
from pipelines.indexing.chunk import check_params, chunk_documents, split_text
from pipelines.indexing.load import Document


def test_normalization_makes_trivial_variants_one_key():
    assert query_hash("What does the with statement do?") == query_hash("  what does the WITH   statement do ")
    assert query_hash("enable 2FA") != query_hash("disable 2FA")
    assert normalize_query("Ｗhat?!") == "what"  # NFKC folds full-width letters


def test_tokenize_keeps_python_keywords():
    assert tokenize("What does the with statement do?") == ["with", "statement"]
    assert tokenize("for in is as", keep_stopwords=True) == ["for", "in", "is", "as"]


def test_split_respects_size_and_overlap():
    text = " ".join(f"word{i}" for i in range(400))
    pieces = split_text(text, size=200, overlap=50)
    assert all(len(p) <= 200 for p in pieces)
    assert " ".join(pieces).count("word399") >= 1
    for a, b in zip(pieces, pieces[1:]):
        shared = set(a.split()) & set(b.split())
        assert 3 <= len(shared) <= 10  # ~50 chars of 7-char words are repeated


def test_split_prefers_paragraph_boundaries():
    text = ("alpha " * 20).strip() + "\n\n" + ("beta " * 20).strip()
    assert split_text(text, size=150, overlap=0) == [("alpha " * 20).strip(), ("beta " * 20).strip()]


def test_chunk_ids_are_content_hashes_and_reindexing_is_idempotent():
    docs = [Document("a", "A", "same text here. " * 30), Document("b", "B", "other text. " * 30)]
    first = [c.id for c in chunk_documents(docs, 200, 20)]
    second = [c.id for c in chunk_documents(docs, 200, 20)]
    assert first == second and len(set(first)) == len(first)
    assert content_id("a", "x") != content_id("b", "x")


@pytest.mark.parametrize("size,overlap,needle", [(300, 300, "lower --overlap"), (10, 0, "raise --chunk-size"),
                                                 (300, -1, "overlap (-1)")])
def test_bad_chunk_params_say_what_to_do(size, overlap, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_params(size, overlap)
