"""Settings of the Embedding, Retrieval and Reranking services."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError
from pipelines.config.env import DEFAULT_EMBED_MODEL, _choice, _get, _num, home


@dataclass(frozen=True)
class EmbeddingConfig:
    model: str = DEFAULT_EMBED_MODEL
    device: str = "auto"
    batch_size: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> EmbeddingConfig:
        return cls(
            model=_get(env, "RAGROUTE_EMBED_MODEL", DEFAULT_EMBED_MODEL),
            device=_choice(env, "RAGROUTE_EMBED_DEVICE", "auto", ("auto", "cpu", "cuda")),
            batch_size=_num(env, "RAGROUTE_EMBED_BATCH_SIZE", 64, int, 1, 4096),
        )


@dataclass(frozen=True)
class SearchConfig:
    """How the Retrieval service ranks chunks for a query (index/fusion.py; chosen on SciFact
    train by evals/retrieval.py)."""

    mode: str = "hybrid"
    """hybrid: dense and BM25 lists fused; dense: the embedding alone"""
    fusion: str = "score"
    weight: float = 0.45
    """score fusion: the dense share (SciFact train's best; docs/results.md "Retrieval quality")"""
    rrf_k: float = 60.0
    depth: int = 100
    """chunks taken from each list before fusion"""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SearchConfig:
        return cls(
            mode=_choice(env, "RAGROUTE_RETRIEVAL", cls.mode, ("hybrid", "dense")),
            fusion=_choice(env, "RAGROUTE_FUSION", cls.fusion, ("score", "rrf")),
            weight=_num(env, "RAGROUTE_FUSION_WEIGHT", cls.weight, float, 0.0, 1.0),
            rrf_k=_num(env, "RAGROUTE_RRF_K", cls.rrf_k, float, 1.0, 1000.0),
            depth=_num(env, "RAGROUTE_FUSION_DEPTH", cls.depth, int, 1, 1000),
        )


@dataclass(frozen=True)
class RetrievalConfig:
    index_dir: Path | None
    """None means: the demo index under RAGROUTE_HOME, built on first start."""
    demo_index_dir: Path
    embed_model: str
    search: SearchConfig = SearchConfig()
    collections_dir: Path | None = None
    """more collections, one index directory each (index/collections.py)"""
    faiss_device: str = "auto"
    """cpu: keep FAISS indexes on CPU even with faiss-gpu and a GPU"""
    faiss_threads: int = 1
    """OpenMP threads per FAISS search: one query at a time gains nothing from more (measured 2x
    slower with 2 on a 10k flat index: evals/retrieval.py), concurrent queries use the cores"""
    milvus_uri: str = ""
    """a Milvus holding collections (index/milvus.py): standalone, cluster or Milvus Lite's server"""
    milvus_token: str = ""
    milvus_timeout_s: float = 2.0
    vector_store: str = "faiss"
    """where the ingestion API puts a new collection unless its request names a backend"""

    @property
    def default_index_dir(self) -> Path:
        """The default collection's index: RAGROUTE_INDEX_DIR, else the demo index."""
        return self.index_dir if self.index_dir is not None else self.demo_index_dir

    def milvus(self, min_timeout_s: float = 0.0):
        """The configured Milvus (index/milvus.py), None without RAGROUTE_MILVUS_URI; ``min_timeout_s``
        for callers that write (ingestion, the CLI) rather than search."""
        if not self.milvus_uri:
            return None
        from index.milvus import MilvusBackend

        return MilvusBackend(self.milvus_uri, token=self.milvus_token,
                             timeout_s=max(self.milvus_timeout_s, min_timeout_s))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, embedding: EmbeddingConfig | None = None) -> RetrievalConfig:
        """``embedding``: the embedding settings already read (else read here)."""
        raw = _get(env, "RAGROUTE_INDEX_DIR", "")
        cfg = cls(
            index_dir=Path(raw).expanduser() if raw else None,
            demo_index_dir=home(env) / "indexes" / "demo",
            embed_model=(embedding or EmbeddingConfig.from_env(env)).model,
            search=SearchConfig.from_env(env),
            collections_dir=Path(_get(env, "RAGROUTE_COLLECTIONS_DIR", str(home(env) / "collections"))).expanduser(),
            faiss_device=_choice(env, "RAGROUTE_FAISS_DEVICE", "auto", ("auto", "cpu")),
            faiss_threads=_num(env, "RAGROUTE_FAISS_THREADS", 1, int, 1, 256),
            milvus_uri=_get(env, "RAGROUTE_MILVUS_URI", ""),
            milvus_token=_get(env, "RAGROUTE_MILVUS_TOKEN", ""),
            milvus_timeout_s=_num(env, "RAGROUTE_MILVUS_TIMEOUT_S", 2.0, float, 0.05, 600.0),
            vector_store=_choice(env, "RAGROUTE_VECTOR_STORE", "faiss", ("faiss", "milvus")),
        )
        if cfg.vector_store == "milvus" and not cfg.milvus_uri:
            raise ConfigError("RAGROUTE_VECTOR_STORE=milvus needs RAGROUTE_MILVUS_URI (e.g. http://host:19530)")
        if cfg.milvus_uri and not cfg.milvus_uri.startswith(("http://", "https://", "tcp://", "unix:")):
            raise ConfigError(f"RAGROUTE_MILVUS_URI ({cfg.milvus_uri!r}) must be a server URI such as "
                              "http://host:19530: several processes share it (for Milvus Lite, run "
                              "`milvus-lite server --data-dir DIR --port 19530` and give its URI)")
        return cfg


@dataclass(frozen=True)
class RerankConfig:
    scorer: str = "fusion"
    """fusion: keep the retrieval's order (no offline reorderer beats it: pipelines/query/rerank.py)"""
    cross_encoder: str = ""
    dense_weight: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RerankConfig:
        cfg = cls(
            scorer=_choice(env, "RAGROUTE_RERANKER", cls.scorer, ("fusion", "hybrid", "cross-encoder")),
            cross_encoder=_get(env, "RAGROUTE_RERANK_MODEL", ""),
            dense_weight=_num(env, "RAGROUTE_RERANK_DENSE_WEIGHT", 0.5, float, 0.0, 1.0),
        )
        if cfg.scorer == "cross-encoder" and not cfg.cross_encoder:
            raise ConfigError(
                "RAGROUTE_RERANKER=cross-encoder needs RAGROUTE_RERANK_MODEL "
                "(a local path or Hugging Face id of a sentence-transformers CrossEncoder)"
            )
        return cfg
