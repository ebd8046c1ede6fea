"""The index manifest: written by the indexing pipeline, checked by the retrieval service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.jsonl"


class IndexManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    index_version: str = Field(description="hash of corpus, embedding model and build parameters")
    embedding_model: str
    dimension: int = Field(gt=0)
    metric: Literal["cosine"] = "cosine"
    index_type: Literal["flat", "hnsw", "ivf", "ivf-sq8"]
    backend: Literal["faiss", "milvus"] = Field("faiss", description="where the vectors live (index/milvus.py)")
    vector_count: int = Field(ge=0)
    corpus_hash: str
    document_count: int = Field(ge=0)
    chunk_size: int
    chunk_overlap: int
    source: str
    built_at: str
    files: dict[str, str] = Field(description="file name -> sha256")

    def check_model(self, what: str, embedding_model: str, dimension: int | None, remedy: str) -> None:
        """ArtifactError naming both models (or both dimensions) unless this index suits the embedder."""
        if self.embedding_model != embedding_model:
            raise ArtifactError(
                f"{what} was built with embedding model {self.embedding_model!r} (dimension {self.dimension}) but "
                f"the service is configured with {embedding_model!r}; {remedy} or set "
                f"RAGROUTE_EMBED_MODEL={self.embedding_model}")
        if dimension is not None and self.dimension != dimension:
            raise ArtifactError(f"{what} has dimension {self.dimension}, the embedder ({embedding_model}) "
                                f"produces {dimension}")

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> IndexManifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"{directory} is not a ragroute index (no {MANIFEST}); build one with `ragroute index build`")
        try:
            manifest = cls.model_validate(json.loads(path.read_text()))
        except (ValueError, ValidationError) as exc:
            raise ArtifactError(f"{path} is not a valid index manifest: {exc}") from None
        if manifest.format_version != FORMAT_VERSION:
            raise ArtifactError(
                f"{path} has format_version {manifest.format_version}; this ragroute reads {FORMAT_VERSION}. Rebuild the index"
            )
        return manifest
