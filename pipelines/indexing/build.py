"""Build an index directory from documents: load -> chunk -> embed -> index."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index import store
from index.manifest import IndexManifest
from pipelines.indexing.chunk import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, chunk_documents, embedding_text
from pipelines.indexing.load import Document, load_pydoc_topics
from pipelines.query.embed import Embedder

log = logging.getLogger(__name__)



def build_index(
    docs: Iterable[Document],
    out: Path,
    embedder: Embedder,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    index_type: str = "flat",
    batch_size: int = 64,
    source: str = "",
    progress: bool = False,
) -> IndexManifest:
    chunks = list(tqdm(chunk_documents(docs, chunk_size, overlap), desc="chunk", unit=" chunks", disable=not progress))
    batches = [chunks[i : i + batch_size] for i in range(0, len(chunks), batch_size)]
    vectors = [
        embedder.encode([embedding_text(c) for c in batch])
        for batch in tqdm(batches, desc="embed", unit=" batches", disable=not progress)
    ]
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), dtype=np.float32)
    manifest = store.write(
        out,
        chunks,
        matrix,
        embedding_model=embedder.model_id,
        index_type=index_type,
        chunk_size=chunk_size,
        chunk_overlap=overlap,
        source=source,
    )
    log.info("built index %s at %s: %d chunks from %d documents", manifest.index_version, out,
             manifest.vector_count, manifest.document_count)
    return manifest


def ensure_demo_index(out: Path, embedder_factory, *, progress: bool = False) -> Path:
    """Build the pydoc demo index at ``out`` unless a valid one is already there.

    A file lock makes concurrent callers (two services starting at once, a CLI run)
    build it once; the others wait and reuse it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "manifest.json").is_file():
            return out
        log.info("building the demo index (Python help topics) at %s; later starts reuse it", out)
        embedder = embedder_factory()
        build_index(load_pydoc_topics(), out, embedder, source="pydoc_data.topics", progress=progress,
                    batch_size=getattr(embedder, "batch_size", 64))
    return out
