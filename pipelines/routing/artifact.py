"""The router artifact: a folder with a manifest (``router.json``) and, for a learned router,
its weights (``weights.npz``). Written by ``ragroute router train`` / ``calibrate``, checked by
the Routing service at start-up:

- the manifest parses and has this format version;
- every file listed in it matches its sha256;
- a learned router was trained on the embedding model (and dimension) the pipeline uses:
  scores of vectors from another model are meaningless, so the service refuses to start.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import ArtifactError
from pipelines.routing.signals import CASCADE_SIGNALS, CASCADE_STARTS

FORMAT_VERSION = 1
MANIFEST = "router.json"
WEIGHTS = "weights.npz"


class CascadeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    signal: Literal[tuple(CASCADE_SIGNALS)] = "logprob_mean"  # type: ignore[valid-type]
    threshold: float = Field(description="escalate when the small tier's confidence signal is below this")
    start: Literal[tuple(CASCADE_STARTS)] = "cheapest"  # type: ignore[valid-type]
    route_threshold: float | None = Field(None, ge=0.0, le=1.0, description="routed start: a router score from "
                                          "which the cascade starts at the large tier")
    calibration: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _threshold_in_the_signals_range(self) -> CascadeSettings:
        lo, hi = CASCADE_SIGNALS[self.signal]
        if not lo <= self.threshold <= hi:
            raise ValueError(f"threshold {self.threshold} is outside {self.signal}'s range [{lo}, {hi}]")
        return self


class RouterManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    router: Literal["heuristic", "learned"]
    method: Literal["knn", "ridge", "knn+ridge"] | None = None
    embedding_model: str | None = Field(None, description="the query embedding the weights expect")
    dimension: int | None = Field(None, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict, description="data path, sha256, size, label")
    metrics: dict[str, Any] = Field(default_factory=dict, description="cross-validated on the training data")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="route to the large tier when score >= this")
    calibration: dict[str, Any] = Field(default_factory=dict)
    cascade: CascadeSettings | None = None
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")
    created_at: str = ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RouterArtifact:
    """A manifest plus its arrays (``coef``/``intercept`` for ridge, ``bank``/``labels``/``k`` for kNN)."""

    def __init__(self, manifest: RouterManifest, arrays: dict[str, np.ndarray] | None = None) -> None:
        self.manifest = manifest
        self.arrays = arrays or {}

    def with_manifest(self, **changes: Any) -> RouterArtifact:
        return RouterArtifact(self.manifest.model_copy(update=changes), self.arrays)

    def save(self, directory: Path) -> Path:
        """Write atomically: a reader never sees new weights with an old manifest."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        if self.arrays:
            buf = io.BytesIO()
            np.savez(buf, **self.arrays)
            data = buf.getvalue()
            _atomic_write(directory / WEIGHTS, data)
            files[WEIGHTS] = sha256_bytes(data)
        elif (directory / WEIGHTS).exists():
            (directory / WEIGHTS).unlink()
        manifest = self.manifest.model_copy(update={
            "files": files, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        _atomic_write(directory / MANIFEST, (manifest.model_dump_json(indent=2) + "\n").encode())
        self.manifest = manifest
        return directory

    @classmethod
    def load(cls, directory: Path, *, embedding_model: str | None = None,
             dimension: int | None = None) -> RouterArtifact:
        """Read and verify; ``embedding_model``/``dimension``: what the pipeline will send."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        for name, digest in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise ArtifactError(f"{file} is listed in {MANIFEST} but missing")
            if sha256_path(file) != digest:
                raise ArtifactError(f"{file} does not match the sha256 in {MANIFEST}; the artifact is corrupt "
                                    "or was modified. Retrain or recalibrate it")
        arrays: dict[str, np.ndarray] = {}
        if WEIGHTS in manifest.files:
            try:
                with np.load(directory / WEIGHTS, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{directory / WEIGHTS} cannot be read: {exc}") from None
        artifact = cls(manifest, arrays)
        artifact._check(directory, embedding_model, dimension)
        return artifact

    def _check(self, directory: Path, embedding_model: str | None, dimension: int | None) -> None:
        m = self.manifest
        if m.router != "learned":
            return
        if m.method is None or m.embedding_model is None or m.dimension is None:
            raise ArtifactError(f"{directory}: a learned router needs method, embedding_model and dimension")
        need = (("bank", "labels", "k") if "knn" in m.method else ()) + (("coef", "intercept") if "ridge" in m.method else ())
        missing = [k for k in need if k not in self.arrays]
        if missing:
            raise ArtifactError(f"{directory}: {m.method} weights lack {', '.join(missing)}")
        text = self.arrays["feat_mean"].shape[-1] if "feat_mean" in self.arrays else 0  # ridge's text features
        for name, extra in (("bank", 0), ("coef", text)):
            if name in need and self.arrays[name].shape[-1] != m.dimension + extra:
                raise ArtifactError(f"{directory}: {name} has dimension {self.arrays[name].shape[-1]}, the manifest "
                                    f"says {m.dimension}" + (f" (+ {extra} text features)" if extra else ""))
        if "bank" in need and len(self.arrays["bank"]) != len(self.arrays["labels"]):
            raise ArtifactError(f"{directory}: {len(self.arrays['bank'])} kNN vectors but "
                                f"{len(self.arrays['labels'])} labels")
        if embedding_model is not None and embedding_model != m.embedding_model:
            raise ArtifactError(
                f"{directory} was trained on query embeddings of {m.embedding_model!r}, but the pipeline embeds "
                f"with {embedding_model!r} (RAGROUTE_EMBED_MODEL); retrain the router for that model")
        if dimension is not None and dimension != m.dimension:
            raise ArtifactError(f"{directory} expects {m.dimension}-dimensional query embeddings, but the "
                                f"pipeline's embedding model produces {dimension}; retrain the router")


def read_manifest(directory: Path) -> RouterManifest:
    """The parsed manifest alone (its files are checked by RouterArtifact.load)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a router artifact (no {MANIFEST}); "
                            "train one with `ragroute router train`")
    try:
        manifest = RouterManifest.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise ArtifactError(f"{path} is not a valid router manifest: {exc}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {manifest.format_version}; this ragroute reads "
                            f"{FORMAT_VERSION}. Retrain with `ragroute router train`")
    return manifest


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
