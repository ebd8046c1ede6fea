"""Write and load an index directory; search it with FAISS."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from common.errors import ArtifactError, BadRequest
from common.files import sha256_file
from common.records import Chunk, ScoredChunk
from common.text import content_id
from index.fusion import Fusion, fuse
from index.lexical import Bm25Index
from index.manifest import CHUNKS_FILE, INDEX_FILE, IndexManifest

log = logging.getLogger(__name__)

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 100
# The index types `ragroute index build --index-type` offers, measured at 100k and 1M vectors by
# evals/index_scale.py (docs/results.md, "Index types by size").
INDEX_SPECS = {
    "flat": "exact inner product; every query scans every vector",
    "hnsw": f"graph (HNSW, M={HNSW_M}); approximate, fast at any size, +{HNSW_M * 8} B/vector",
    "ivf": "inverted lists (IVF, 4 x sqrt(n) lists) over full vectors; approximate, needs training",
    "ivf-sq8": "inverted lists over 8-bit scalar-quantized vectors; approximate, 4x less memory",
}
# The search parameter each approximate type is loaded with. evals/index_scale.py measures what
# recall@10 >= 0.95 costs: on 1M clustered vectors shaped like MiniLM embeddings (--shape
# mixture), efSearch 128-192 (0.95-0.97, p50 0.55-0.78 ms on one core) and nprobe 16-24; on a
# deliberately hard Gaussian, efSearch 256 / nprobe 192 at 100k and out of reach at 1M. docs/results.md,
# "Index types by size".
DEFAULT_SEARCH_PARAM = {"hnsw": 192, "ivf": 32, "ivf-sq8": 32}


def _nlist(n: int) -> int:
    return max(1, min(n // 39, int(4 * np.sqrt(n))))


def build_faiss(vectors: np.ndarray, index_type: str) -> faiss.Index:
    """A FAISS index of ``index_type`` (INDEX_SPECS) over L2-normalized ``vectors``."""
    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    elif index_type in ("ivf", "ivf-sq8"):
        nlist = _nlist(len(vectors))
        quantizer = faiss.IndexFlatIP(dim)
        if index_type == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        sample = vectors if len(vectors) <= 64 * nlist else vectors[
            np.random.default_rng(0).choice(len(vectors), 64 * nlist, replace=False)]
        index.train(sample)
        index.make_direct_map()  # reconstruct() gives lexical-only hits their dense score
    else:
        raise ValueError(f"index type {index_type!r} is not one of {', '.join(INDEX_SPECS)}")
    index.add(vectors)
    return index


def set_search_param(index: faiss.Index, index_type: str, value: int) -> None:
    """efSearch for HNSW, nprobe for IVF (how much of the index one query visits)."""
    if index_type == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = value
    elif index_type in ("ivf", "ivf-sq8"):
        faiss.extract_index_ivf(index).nprobe = value


def write(
    directory: Path,
    chunks: Sequence[Chunk],
    vectors: np.ndarray,
    *,
    embedding_model: str,
    index_type: str,
    chunk_size: int,
    chunk_overlap: int,
    source: str,
) -> IndexManifest:
    """Write an index atomically: readers see the old directory or the complete new one."""
    if len(chunks) != len(vectors):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    if len(chunks) == 0:
        raise ValueError("no chunks to index; is the source empty?")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    corpus_hash = content_id(*sorted(c.id for c in chunks))
    directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        faiss.write_index(build_faiss(vectors, index_type), str(tmp / INDEX_FILE))
        with (tmp / CHUNKS_FILE).open("w") as f:
            for c in chunks:
                f.write(c.model_dump_json() + "\n")
        manifest = IndexManifest(
            index_version=content_id(corpus_hash, embedding_model, index_type, str(chunk_size), str(chunk_overlap)),
            embedding_model=embedding_model,
            dimension=int(vectors.shape[1]),
            index_type=index_type,  # type: ignore[arg-type]
            vector_count=len(chunks),
            corpus_hash=corpus_hash,
            document_count=len({c.doc_id for c in chunks}),
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            source=source,
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            files={name: sha256_file(tmp / name) for name in (INDEX_FILE, CHUNKS_FILE)},
        )
        manifest.write(tmp)
        if directory.exists():
            old = directory.with_name(f".{directory.name}-old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _to_gpu_if_available(index: faiss.Index, gpu: bool) -> faiss.Index:
    """faiss-gpu builds expose StandardGpuResources; faiss-cpu does not. ``gpu=False``
    (RAGROUTE_FAISS_DEVICE=cpu) keeps the index on CPU."""
    if not gpu or not hasattr(faiss, "StandardGpuResources"):
        return index
    if faiss.get_num_gpus() < 1 or isinstance(index, faiss.IndexHNSWFlat):  # no GPU HNSW in faiss
        return index
    log.info("moving FAISS index to %d GPU(s)", faiss.get_num_gpus())
    return faiss.index_cpu_to_all_gpus(index)


class IndexStore:
    """A loaded, verified index. ``search`` returns the top chunks by cosine similarity."""

    def __init__(self, directory: Path, manifest: IndexManifest, index: faiss.Index, chunks: list[Chunk],
                 cpu_index: faiss.Index | None = None):
        self.directory = directory
        self.manifest = manifest
        self._index = index
        self._cpu_index = cpu_index if cpu_index is not None else index  # reconstructs vectors for dense scores
        self.chunks = chunks
        # The lexical half of hybrid retrieval, and all of it when no query embedding is available.
        self.lexical = Bm25Index([f"{c.title} {c.text}" for c in chunks])

    @classmethod
    def load(cls, directory: Path, *, embedding_model: str, dimension: int | None = None,
             gpu: bool = True) -> IndexStore:
        """Load and check an index built for ``embedding_model``; raises ArtifactError on any mismatch.
        ``gpu``: move it to the GPUs when faiss-gpu sees some."""
        manifest = IndexManifest.read(directory)
        manifest.check_model(f"index {directory}", embedding_model, dimension,
                             f"rebuild the index with `ragroute index build --model {embedding_model}`")
        for name, digest in manifest.files.items():
            path = directory / name
            if not path.is_file() or sha256_file(path) != digest:
                raise ArtifactError(f"{path} is missing or does not match the sha256 in its manifest; rebuild the index")
        index = faiss.read_index(str(directory / INDEX_FILE))
        with (directory / CHUNKS_FILE).open() as f:
            chunks = [Chunk.model_validate_json(line) for line in f if line.strip()]
        if index.ntotal != manifest.vector_count or len(chunks) != manifest.vector_count or index.d != manifest.dimension:
            raise ArtifactError(
                f"index {directory} is inconsistent: manifest says {manifest.vector_count} x {manifest.dimension}, "
                f"FAISS has {index.ntotal} x {index.d}, chunk store has {len(chunks)}"
            )
        if manifest.index_type in DEFAULT_SEARCH_PARAM:
            set_search_param(index, manifest.index_type, DEFAULT_SEARCH_PARAM[manifest.index_type])
        log.info("loaded index %s (%s, %d vectors)", directory, manifest.index_version, manifest.vector_count)
        return cls(directory, manifest, _to_gpu_if_available(index, gpu), chunks, cpu_index=index)

    def _query_vector(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.manifest.dimension:
            raise BadRequest("vector", f"has dimension {query.shape[1]}, this index expects {self.manifest.dimension}")
        if not np.all(np.isfinite(query)):
            raise BadRequest("vector", "contains NaN or infinite values")
        return query

    def dense_rows(self, vector: Sequence[float] | np.ndarray, n: int) -> list[tuple[int, float]]:
        """(row, cosine) of the ``n`` nearest chunks, best first."""
        scores, rows = self._index.search(self._query_vector(vector), min(n, self.manifest.vector_count))
        return [(int(r), float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]

    def cosines(self, vector: Sequence[float] | np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """Cosine of the query and each of ``rows`` (vectors are stored normalized)."""
        if not rows:
            return np.zeros(0, dtype=np.float32)
        return self.vectors(rows) @ self._query_vector(vector)[0]

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """The stored (normalized) vectors of ``rows``, one per row."""
        return self._cpu_index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def search(self, vector: Sequence[float] | np.ndarray, n: int) -> list[ScoredChunk]:
        return [ScoredChunk(chunk=self.chunks[r], score=s, dense_score=s) for r, s in self.dense_rows(vector, n)]

    def search_hybrid(self, vector: Sequence[float] | np.ndarray, query: str, n: int, *, fusion: Fusion = "rrf",
                      depth: int = 100, rrf_k: float = 60.0, weight: float = 0.5) -> list[ScoredChunk]:
        """Dense and BM25 top-``depth`` lists fused (index/fusion.py); the best ``n``. ``score`` is the
        fused score, ``dense_score`` the chunk's cosine whichever list found it."""
        depth = max(depth, n)
        dense = self.dense_rows(vector, depth)
        fused = fuse(dense, self.lexical.top(query, depth), method=fusion, rrf_k=rrf_k, weight=weight)[:n]
        cosine = dict(dense)
        missing = [r for r, _ in fused if r not in cosine]
        cosine.update(zip(missing, self.cosines(vector, missing).tolist(), strict=True))
        return [ScoredChunk(chunk=self.chunks[r], score=s, dense_score=cosine[r]) for r, s in fused]

    def search_text(self, query: str, n: int) -> list[ScoredChunk]:
        """BM25 over the chunk store; ``dense_score`` is 0: there is no query vector to compare."""
        return [ScoredChunk(chunk=self.chunks[row], score=score, dense_score=0.0)
                for row, score in self.lexical.top(query, n)]
