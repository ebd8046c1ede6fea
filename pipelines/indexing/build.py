"""Build an index directory from documents: load -> chunk -> embed -> index."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.records import Chunk
from index import store
from index.manifest import IndexManifest
from index.milvus import MilvusBackend
from pipelines.config import EmbeddingConfig, RetrievalConfig
from pipelines.indexing.chunk import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, chunk_documents, embedding_text
from pipelines.indexing.load import Document, load_pydoc_topics
from pipelines.query.embed import Embedder

log = logging.getLogger(__name__)



def embed_documents(docs: Iterable[Document], embedder: Embedder, *, chunk_size: int, overlap: int,
                    batch_size: int, progress: bool) -> tuple[list[Chunk], np.ndarray]:
    """The documents' chunks and their embeddings (rows in chunk order)."""
    chunks = list(tqdm(chunk_documents(docs, chunk_size, overlap), desc="chunk", unit=" chunks", disable=not progress))
    batches = [chunks[i : i + batch_size] for i in range(0, len(chunks), batch_size)]
    vectors = [
        embedder.encode([embedding_text(c) for c in batch])
        for batch in tqdm(batches, desc="embed", unit=" batches", disable=not progress)
    ]
    return chunks, np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), dtype=np.float32)


def build_milvus(docs: Iterable[Document], name: str, embedder: Embedder, backend: MilvusBackend, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_OVERLAP, batch_size: int = 64,
                 progress: bool = False) -> tuple[IndexManifest, str]:
    """The documents as the next version of the Milvus collection ``name`` (created if new): every
    Retrieval replica watching that Milvus serves it within a second (index/milvus.py)."""
    chunks, matrix = embed_documents(docs, embedder, chunk_size=chunk_size, overlap=overlap, batch_size=batch_size,
                                     progress=progress)
    if not chunks:
        raise ValueError("no chunks to index; is the source empty?")
    if name not in backend.versions():
        backend.create(name)
    manifest, version = backend.write_version(name, chunks, matrix, embedding_model=embedder.model_id,
                                              chunk_size=chunk_size, chunk_overlap=overlap)
    log.info("wrote %s to Milvus as %s: %d chunks from %d documents", name, version, manifest.vector_count,
             manifest.document_count)
    return manifest, version


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
    chunks, matrix = embed_documents(docs, embedder, chunk_size=chunk_size, overlap=overlap, batch_size=batch_size,
                                     progress=progress)
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


def ensure_default_index(cfg: RetrievalConfig) -> Path:
    """The start-up step before the Retrieval service opens its collections: with no index
    configured (RAGROUTE_INDEX_DIR), build the demo index on first start; later starts reuse it."""
    if cfg.index_dir is not None:
        return cfg.index_dir
    from pipelines.query.embed import SentenceTransformerEmbedder

    return ensure_demo_index(cfg.demo_index_dir,
                             lambda: SentenceTransformerEmbedder(EmbeddingConfig(model=cfg.embed_model)))
