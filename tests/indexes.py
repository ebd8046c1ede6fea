"""A tiny real index folder for tests (3 chunks, 8-d)."""

from __future__ import annotations

import numpy as np

from common.records import Chunk
from index import store


def make_index(directory, text: str, model: str = "m") -> None:
    rng = np.random.default_rng(len(text))
    vecs = rng.normal(size=(3, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [Chunk(id=f"{text}{i}", doc_id=f"{text}-doc{i}", title="t", text=f"{text} {i}") for i in range(3)]
    store.write(directory, chunks, vecs, embedding_model=model, index_type="flat", chunk_size=100, chunk_overlap=0,
                source=text)
