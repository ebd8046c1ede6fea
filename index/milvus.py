"""Collections in Milvus: the second vector-store backend, behind the same search interface as
FAISS (index/store.py), for corpora that outgrow one machine or must be shared by replicas.

The same code talks to Milvus standalone or a cluster (``RAGROUTE_MILVUS_URI=http://host:19530``)
and to Milvus Lite run as a gRPC server (``milvus-lite server --data-dir D --port P``), which the
service's processes (Retrieval replicas, the ingestion API) and other replicas reach by URI.

Layout. A ragroute collection ``NAME`` is a set of Milvus collections, one per version, and an
alias naming the served one::

    ragroute_<enc(NAME)>_V000007     rows: row (INT64 key), doc_id, chunk (JSON), terms, vector, sparse
    ragroute_<enc(NAME)>  (alias) -> ragroute_<enc(NAME)>_V000007

``enc`` escapes the two characters Milvus names lack ('_' -> '__', '-' -> '_d'), so no name
collides with another or with a version suffix. A new version is written beside the served one
and the alias is moved (``alter_alias``, atomic in Milvus): a reader sees the old or the new
version, never a half-written one. Each version collection's properties hold its manifest
(index/manifest.py, ``backend: milvus``), checked at load like a FAISS index's: the embedding
model, the dimension (against the schema's vector field too), the row count.

Hybrid search uses Milvus's own full-text search: a BM25 function over ``terms``, which holds the
chunk's Snowball-stemmed terms (index/lexical.py) so that both backends' lexical sides see the
same words; the two lists are fused here (index/fusion.py) exactly as for FAISS.

A Milvus that is down or slow raises StageError("retrieve", ...) within ``timeout_s``: the RAG
pipeline reports and budgets it like any slow stage.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from common.errors import ArtifactError, BadRequest, StageError
from common.records import Chunk, ScoredChunk
from common.text import content_id
from index.fusion import Fusion, fuse
from index.layout import NAME
from index.manifest import IndexManifest

log = logging.getLogger(__name__)

PREFIX = "ragroute_"
VERSION = re.compile(r"^ragroute_((?:[a-z0-9]|__|_d)+)_V(\d{6})$")
MANIFEST_KEY = "ragroute.manifest"  # the collection property holding a version's manifest
MAX_TEXT = 65_535  # Milvus VARCHAR limit (bytes)
INSERT_BATCH = 500
HNSW_ABOVE = 100_000  # rows; exact (FLAT) search up to here, as for FAISS managed collections


def enc(name: str) -> str:
    """
    >>> enc("a_b-c")
    'a__b_dc'
    """
    return name.replace("_", "__").replace("-", "_d")


def dec(encoded: str) -> str:
    """
    >>> dec(enc("a_b-c_-d"))
    'a_b-c_-d'
    """
    return re.sub(r"__|_d", lambda m: "_" if m.group() == "__" else "-", encoded)


def alias_of(name: str) -> str:
    return PREFIX + enc(name)


def version_of(name: str, number: int) -> str:
    return f"{alias_of(name)}_V{number:06d}"


def _terms(text: str) -> str:
    from index.lexical import terms

    return " ".join(terms(text))


def _utf8_cut(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


class MilvusBackend:
    """One Milvus (by URI) holding ragroute collections. Thread-safe; the client connects lazily."""

    def __init__(self, uri: str, *, token: str = "", timeout_s: float = 2.0) -> None:
        self.uri, self.token, self.timeout_s = uri, token, timeout_s
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="milvus")  # a hybrid search's lexical half
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MilvusBackend({self.uri!r})"

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    from pymilvus import MilvusClient
                except ImportError as exc:  # pragma: no cover - a pinned dependency
                    raise StageError("retrieve", "pymilvus is not installed; pip install pymilvus") from exc
                # pymilvus configures its loggers on import and logs every failed RPC at ERROR with
                # a traceback (a poll every 0.5 s while Milvus is down); the failures reach our logs
                # as StageError, once per distinct cause.
                logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
                try:
                    self._client = MilvusClient(uri=self.uri, token=self.token, timeout=self.timeout_s)
                except Exception as exc:  # noqa: BLE001 - any connection failure is the stage's failure
                    raise StageError("retrieve", "Milvus is unreachable", f"{self.uri}: {exc}") from None
            return self._client

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(...)`` within the timeout; a Milvus failure becomes StageError (503)."""
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except StageError:
            raise
        except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException and grpc errors alike
            raise StageError("retrieve", f"Milvus {method} failed", f"{self.uri}: {exc}") from None

    # -- the registry: which collections exist, which version each serves ---------------------
    def versions(self) -> dict[str, list[str]]:
        """Every ragroute collection in this Milvus -> its version collections, oldest first."""
        out: dict[str, list[str]] = {}
        for full in sorted(self.call("list_collections")):
            match = VERSION.match(full)
            if match:
                out.setdefault(dec(match.group(1)), []).append(full)
        return out

    def served(self, name: str) -> str | None:
        """The version collection the alias of ``name`` points at; None before its first version."""
        alias = alias_of(name)
        if alias not in self.call("list_aliases").get("aliases", []):
            return None
        return self.call("describe_alias", alias)["collection_name"]

    def served_all(self) -> dict[str, str]:
        """Every ragroute collection with a served version -> that version collection."""
        out = {}
        for alias in self.call("list_aliases").get("aliases", []):
            if alias.startswith(PREFIX) and VERSION.match(f"{alias}_V000000"):
                out[dec(alias[len(PREFIX):])] = self.call("describe_alias", alias)["collection_name"]
        return out

    def manifest(self, version: str) -> IndexManifest:
        info = self.call("describe_collection", version)
        try:
            manifest = IndexManifest.model_validate_json((info.get("properties") or {}).get(MANIFEST_KEY, ""))
        except ValueError as exc:
            raise ArtifactError(f"Milvus collection {version} carries no valid ragroute manifest: {exc}") from None
        vector = next((f for f in info["fields"] if f["name"] == "vector"), None)
        dim = int(vector["params"]["dim"]) if vector else None
        if dim != manifest.dimension:
            raise ArtifactError(f"Milvus collection {version}: its schema's vector field has dimension {dim}, "
                                f"its manifest says {manifest.dimension}")
        return manifest

    def open(self, version: str, *, embedding_model: str, dimension: int | None = None) -> MilvusStore:
        """A verified store over one version collection (ArtifactError on any mismatch)."""
        manifest = self.manifest(version)
        manifest.check_model(f"Milvus collection {version}", embedding_model, dimension, "re-ingest its documents")
        self.call("load_collection", version)
        rows = int(self.call("get_collection_stats", version).get("row_count", -1))
        if rows != manifest.vector_count:
            raise ArtifactError(f"Milvus collection {version} is inconsistent: its manifest says "
                                f"{manifest.vector_count} rows, Milvus holds {rows}")
        return MilvusStore(self, version, manifest)

    # -- writing versions (pipelines/indexing/ingest.py) ---------------------------------------
    def create(self, name: str) -> None:
        """Register ``name`` with an empty version 0 (not served until a version has rows)."""
        if not NAME.fullmatch(name):
            raise BadRequest("collection", f"{name!r} is not a valid collection name")
        self._create_version(version_of(name, 0), [], np.zeros((0, 1), np.float32), None)

    def drop(self, name: str) -> None:
        if self.served(name) is not None:
            self.call("drop_alias", alias_of(name))
        for version in self.versions().get(name, []):
            self.call("drop_collection", version)

    def read(self, version: str) -> tuple[list[Chunk], np.ndarray]:
        """Every chunk of a version and its vector, in row order."""
        manifest = self.manifest(version)
        chunks: list[Chunk] = []
        vectors: list[list[float]] = []
        if manifest.vector_count:
            rows: list[dict] = []
            iterator = self.call("query_iterator", version, batch_size=1000, filter="row >= 0",
                                 output_fields=["row", "chunk", "vector"])
            try:
                while batch := iterator.next():
                    rows += batch
            except Exception as exc:  # noqa: BLE001
                raise StageError("ingest", f"Milvus: reading {version} failed", f"{self.uri}: {exc}") from None
            finally:
                iterator.close()
            rows.sort(key=lambda r: r["row"])
            chunks = [Chunk.model_validate_json(r["chunk"]) for r in rows]
            vectors = [r["vector"] for r in rows]
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(chunks), manifest.dimension)
        return chunks, matrix

    def write_version(self, name: str, chunks: Sequence[Chunk], vectors: np.ndarray, *, embedding_model: str,
                      chunk_size: int, chunk_overlap: int) -> tuple[IndexManifest, str]:
        """Write the next version of ``name`` and point its alias at it; older versions than the
        previous one are dropped. A version collection that already exists (another writer got
        there first) fails this write; the served version is untouched."""
        existing = self.versions().get(name, [])
        number = int(VERSION.match(existing[-1]).group(2)) + 1 if existing else 1
        version = version_of(name, number)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        manifest = IndexManifest(
            index_version=content_id(content_id(*sorted(c.id for c in chunks)), embedding_model, "milvus",
                                     str(chunk_size), str(chunk_overlap)),
            embedding_model=embedding_model, dimension=int(vectors.shape[1]),
            index_type="flat" if len(chunks) <= HNSW_ABOVE else "hnsw", backend="milvus",
            vector_count=len(chunks), corpus_hash=content_id(*sorted(c.id for c in chunks)),
            document_count=len({c.doc_id for c in chunks}), chunk_size=chunk_size, chunk_overlap=chunk_overlap,
            source=f"collection {name}", built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), files={})
        self._create_version(version, chunks, vectors, manifest)
        served = self.served(name)
        self.call("alter_alias" if served else "create_alias", version, alias_of(name))  # the swap
        keep = {version, *(existing[-1:] if existing and served else [])}
        for old in existing:
            if old not in keep:
                self.call("drop_collection", old)
        log.info("milvus collection %s now serves %s (%d chunks)", name, version, len(chunks))
        return manifest, version

    def _create_version(self, version: str, chunks: Sequence[Chunk], vectors: np.ndarray,
                        manifest: IndexManifest | None) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        dim = manifest.dimension if manifest else 1
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=512)
        schema.add_field("chunk", DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("terms", DataType.VARCHAR, max_length=MAX_TEXT, enable_analyzer=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["terms"],
                                     output_field_names=["sparse"]))
        params = self.client.prepare_index_params()
        if manifest is not None and manifest.index_type == "hnsw":
            params.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 32, "efConstruction": 100})
        else:
            params.add_index("vector", index_type="FLAT", metric_type="IP")
        params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        if self.call("has_collection", version):
            raise StageError("ingest", f"Milvus collection {version} exists: another writer is making this "
                                       "version; retry when its job is done")
        self.call("create_collection", version, schema=schema, index_params=params,
                  properties={MANIFEST_KEY: manifest.model_dump_json() if manifest else _EMPTY})
        try:
            for start in range(0, len(chunks), INSERT_BATCH):
                rows = [{"row": start + i, "doc_id": c.doc_id, "chunk": c.model_dump_json(),
                         "terms": _utf8_cut(_terms(f"{c.title} {c.text}"), MAX_TEXT),
                         "vector": vectors[start + i].tolist()}
                        for i, c in enumerate(chunks[start:start + INSERT_BATCH])]
                self.call("insert", version, rows, timeout=max(self.timeout_s, 60.0))
            self.call("flush", version, timeout=max(self.timeout_s, 300.0))
            self.call("load_collection", version, timeout=max(self.timeout_s, 300.0))
        except BaseException:
            try:
                self.client.drop_collection(version)
            except Exception:  # noqa: BLE001 - the next write collects it
                log.warning("could not drop the partial Milvus collection %s", version)
            raise


# Version 0's description: a manifest-shaped marker saying "registered, no rows yet".
_EMPTY = IndexManifest(index_version="empty", embedding_model="", dimension=1, index_type="flat", backend="milvus",
                       vector_count=0, corpus_hash="", document_count=0, chunk_size=0, chunk_overlap=0,
                       source="", built_at="", files={}).model_dump_json()


class MilvusStore:
    """A verified version collection, searched like ``IndexStore`` (index/store.py)."""

    def __init__(self, backend: MilvusBackend, collection: str, manifest: IndexManifest) -> None:
        self.backend, self.collection, self.manifest = backend, collection, manifest

    def _query_vector(self, vector: Sequence[float] | np.ndarray) -> list[float]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.manifest.dimension:
            raise BadRequest("vector", f"has dimension {query.shape[0]}, this index expects {self.manifest.dimension}")
        if not np.all(np.isfinite(query)):
            raise BadRequest("vector", "contains NaN or infinite values")
        return query.tolist()

    def _search(self, data: Any, field: str, metric: str, n: int) -> list[tuple[int, float]]:
        n = min(n, self.manifest.vector_count)
        if n <= 0:
            return []
        hits = self.backend.call("search", self.collection, data=[data], anns_field=field, limit=n,
                                 output_fields=["row"], search_params={"metric_type": metric})
        # Inner products come best first, highest first. BM25 comes best first too; Milvus Lite
        # reports it negated, Milvus proper positive: the magnitude is the score either way.
        return [(int(h["row"]), abs(float(h["distance"])) if metric == "BM25" else float(h["distance"]))
                for h in hits[0]]

    def dense_rows(self, vector: Sequence[float] | np.ndarray, n: int) -> list[tuple[int, float]]:
        return self._search(self._query_vector(vector), "vector", "IP", n)

    def lexical_rows(self, query: str, n: int) -> list[tuple[int, float]]:
        text = _terms(query)
        return self._search(text, "sparse", "BM25", n) if text else []

    def _rows(self, rows: Sequence[int], vectors: bool = False) -> dict[int, dict]:
        if not rows:
            return {}
        fields = ["row", "chunk", "vector"] if vectors else ["row", "chunk"]
        return {int(r["row"]): r for r in self.backend.call("get", self.collection, ids=list(rows),
                                                              output_fields=fields)}

    def search(self, vector: Sequence[float] | np.ndarray, n: int) -> list[ScoredChunk]:
        dense = self.dense_rows(vector, n)
        got = self._rows([r for r, _ in dense])
        return [ScoredChunk(chunk=Chunk.model_validate_json(got[r]["chunk"]), score=s, dense_score=s)
                for r, s in dense]

    def search_hybrid(self, vector: Sequence[float] | np.ndarray, query: str, n: int, *, fusion: Fusion = "rrf",
                      depth: int = 100, rrf_k: float = 60.0, weight: float = 0.5) -> list[ScoredChunk]:
        depth = max(depth, n)
        query_vector = self._query_vector(vector)
        lexical = self.backend.pool.submit(self.lexical_rows, query, depth)  # both searches at once
        dense = self.dense_rows(query_vector, depth)
        fused = fuse(dense, lexical.result(), method=fusion, rrf_k=rrf_k, weight=weight)[:n]
        cosine = dict(dense)
        got = self._rows([r for r, _ in fused], vectors=any(r not in cosine for r, _ in fused))
        q = np.asarray(query_vector, dtype=np.float32)
        return [ScoredChunk(chunk=Chunk.model_validate_json(got[r]["chunk"]), score=s,
                            dense_score=cosine[r] if r in cosine else float(np.asarray(got[r]["vector"]) @ q))
                for r, s in fused]

    def search_text(self, query: str, n: int) -> list[ScoredChunk]:
        lexical = self.lexical_rows(query, n)
        got = self._rows([r for r, _ in lexical])
        return [ScoredChunk(chunk=Chunk.model_validate_json(got[r]["chunk"]), score=s, dense_score=0.0)
                for r, s in lexical]
