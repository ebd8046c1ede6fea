"""Documents in and out of a collection while it serves: versioned index folders swapped atomically.

A managed collection is a folder under the collections folder (index/collections.py):

    <collections>/<name>/
        CURRENT              the served version's folder name, replaced atomically (rename)
        versions/v000007/    one complete index folder per version (index/store.py format)
        jobs/<id>.json       one record per ingestion job (status, progress, result, error)
        .lock                held (flock) by the process writing a new version

A job (upsert documents, delete documents) reads the served version's chunks and vectors, drops
the chunks of every document it replaces or deletes, chunks and embeds the new documents (through
the Embedding service, in batches), writes the next version beside the served one (store.write:
a hidden folder renamed into place when complete), then points CURRENT at it. Readers see the
old version or the new one, never a half-written one: a job killed at any point leaves CURRENT on
a complete version, and its record, still "running" with a pid that is gone, reads as failed.
After a swap, versions older than the previous one are removed (garbage collection); the
Retrieval service keeps serving a version it has loaded until the new one is loaded.

Jobs on one collection run one at a time (a per-collection lock in this process, the flock across
processes): a second job waits as "queued".

A collection created with ``"backend": "milvus"`` (or by default with RAGROUTE_VECTOR_STORE=milvus)
lives in Milvus instead (index/milvus.py): each version is a Milvus collection and the swap moves
an alias, so every replica and every Retrieval process sees it at once. Its job records stay with
the replica that ran the job (``<collections>/.milvus/<name>/jobs``) and, with Redis configured
(REDIS_URL), in Redis too (``<namespace>:jobs:<id>``, kept 7 days), so any replica answers for any
job; a job whose record stops changing for ``STALE_S`` (it is re-saved every ``HEARTBEAT_S`` while
queued or running) was on a replica that died, and reads as failed. Two replicas writing one Milvus collection at the same moment cannot both make its
next version: the second job fails (409-style message: retry), the served version is untouched.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from common.errors import BadRequest, NotFound
from common.records import Chunk
from index.layout import CURRENT, DEFAULT, NAME, VERSIONS, current_folder
from index.manifest import CHUNKS_FILE, INDEX_FILE, IndexManifest
from index.milvus import MilvusBackend
from pipelines.indexing.chunk import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, chunk_documents, embedding_text
from pipelines.indexing.jobs import (EMBED_BATCH, FLAT_MAX, HEARTBEAT_S, JOBS, MILVUS_JOBS, Conflict, Job, JobRecords,
                                     write_atomic)
from pipelines.indexing.load import Document

log = logging.getLogger(__name__)

class ManagedCollections:
    """Create, drop and change collections under ``root`` (or in ``milvus``); every write goes
    through a job. Methods that may call Milvus block: the HTTP layer runs them in a thread."""

    def __init__(self, root: Path, *, embedding_model: str, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 overlap: int = DEFAULT_OVERLAP, milvus: MilvusBackend | None = None,
                 default_backend: Literal["faiss", "milvus"] = "faiss", redis_url: str = "",
                 namespace: str = "ragroute") -> None:
        if default_backend == "milvus" and milvus is None:
            raise ValueError("default_backend='milvus' needs a Milvus backend")
        self.records = JobRecords(root, redis_url, namespace)
        self.root = root
        self.embedding_model = embedding_model
        self.chunk_size, self.overlap = chunk_size, overlap
        self.milvus = milvus
        self.default_backend = default_backend
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- collections -------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        if name == DEFAULT:
            raise Conflict(f"collection {DEFAULT!r} is served from RAGROUTE_INDEX_DIR and is read-only; "
                           "create a managed collection to ingest into")
        if not NAME.fullmatch(name):
            raise BadRequest("collection", f"{name!r}: 1-64 characters [a-z0-9_-] starting with a letter or digit")
        return self.root / name

    def check(self, name: str) -> None:
        """NotFound / Conflict unless ``name`` is a managed collection."""
        self._managed(name)

    def _in_milvus(self, name: str) -> bool:
        return self.milvus is not None and name in self.milvus.versions()

    def _managed(self, name: str) -> Path:
        """The folder of a managed collection: its versions (FAISS), or its job records (Milvus)."""
        path = self._dir(name)
        if (path / VERSIONS).is_dir():
            return path
        if (path / "manifest.json").is_file():
            raise Conflict(f"collection {name!r} is a read-only index folder (built by `ragroute index build`); "
                           "create a managed collection to ingest into")
        if self._in_milvus(name):
            folder = self.root / MILVUS_JOBS / name
            (folder / JOBS).mkdir(parents=True, exist_ok=True)  # a job run on this replica keeps its record here
            return folder
        raise NotFound("collection", f"{name!r} is not a managed collection; create it first")

    def create(self, name: str, backend: Literal["faiss", "milvus"] | None = None) -> dict:
        path = self._dir(name)
        backend = backend or self.default_backend
        if path.exists() or self._in_milvus(name):
            raise Conflict(f"collection {name!r} exists")
        if backend == "milvus":
            if self.milvus is None:
                raise BadRequest("backend", "milvus: no Milvus is configured (RAGROUTE_MILVUS_URI)")
            self.milvus.create(name)
            log.info("collection %s created in Milvus at %s", name, self.milvus.uri)
            return {"name": name, "documents": 0, "backend": "milvus"}
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".new-{name}-{secrets.token_hex(4)}"
        (tmp / VERSIONS).mkdir(parents=True)
        (tmp / JOBS).mkdir()
        try:
            os.rename(tmp, path)  # fails if another request created it first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Conflict(f"collection {name!r} exists") from None
        log.info("collection %s created at %s", name, path)
        return {"name": name, "documents": 0, "backend": "faiss"}

    def drop(self, name: str) -> dict:
        path = self._managed(name)
        if path.parent.name == MILVUS_JOBS:
            assert self.milvus is not None
            with open(path / ".lock", "a+") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise Conflict(f"collection {name!r} has a job running; drop it when the job is done") from None
                self.milvus.drop(name)
            shutil.rmtree(path, ignore_errors=True)
            log.info("collection %s dropped from Milvus", name)
            return {"name": name, "dropped": True}
        with open(path / ".lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(f"collection {name!r} has a job running; drop it when the job is done") from None
            gone = self.root / f".dropped-{name}-{secrets.token_hex(4)}"
            os.rename(path, gone)  # disappears at once for readers; removed below
        shutil.rmtree(gone, ignore_errors=True)
        log.info("collection %s dropped", name)
        return {"name": name, "dropped": True}

    # -- jobs --------------------------------------------------------------------------------
    def _job_path(self, name: str, job_id: str) -> Path:
        if (self.root / name / VERSIONS).is_dir():
            return self.root / name / JOBS / f"{job_id}.json"
        return self.root / MILVUS_JOBS / name / JOBS / f"{job_id}.json"

    def _save(self, job: Job) -> None:
        self.records.save(job, self._job_path(job.collection, job.id))

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await asyncio.to_thread(self._save, job)

    def job(self, job_id: str) -> Job:
        return self.records.get(job_id)

    def submit(self, name: str, kind: Literal["upsert", "delete"], payload: Sequence,
               embed: Callable[[list[str]], Awaitable[np.ndarray]],
               on_done: Callable[[Job, dict, np.ndarray], Awaitable[dict | None]] | None = None) -> Job:
        """Queue a job and start it in the background; returns its record (status "queued").
        ``check(name)`` first (it may call Milvus: run it in a thread). ``on_done(job, result,
        added)``: after a swap, with the embeddings of the chunks added; what it returns joins the
        job's result."""
        if not self._job_path(name, "x").parent.is_dir():
            raise NotFound("collection", f"{name!r} is not a managed collection; create it first")
        job = Job(id=secrets.token_hex(8), collection=name, kind=kind, documents=len(payload))
        self._save(job)
        task = asyncio.get_running_loop().create_task(self._run(job, payload, embed, on_done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job, payload: Sequence, embed, on_done) -> None:
        beat = asyncio.create_task(self._heartbeat(job)) if self.records.shared else None
        try:
            await self._run_locked(job, payload, embed, on_done)
        finally:
            if beat is not None:
                beat.cancel()

    async def _run_locked(self, job: Job, payload: Sequence, embed, on_done) -> None:
        lock = self._locks.setdefault(job.collection, asyncio.Lock())
        async with lock:
            try:
                path = await asyncio.to_thread(self._managed, job.collection)
                with open(path / ".lock", "a+") as flock:
                    await asyncio.to_thread(fcntl.flock, flock, fcntl.LOCK_EX)
                    job.status = "running"
                    self._save(job)
                    result, added = await self._apply(path, job, payload, embed)
                if on_done is not None and result["swapped"]:
                    try:  # the new version is served already: whatever happens here, the job succeeded
                        if (extra := await on_done(job, result, added)) is not None:
                            result.update(extra)
                    except Exception as exc:  # noqa: BLE001
                        log.warning("job %s: after the swap: %s", job.id, exc)
                job.status, job.result = "succeeded", result
                self._save(job)
                log.info("job %s on %s succeeded: %s", job.id, job.collection, result)
            except Exception as exc:  # noqa: BLE001 - the job fails with its reason; the served version stays
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
                log.warning("job %s on %s failed: %s", job.id, job.collection, job.error)
                self._save(job)

    async def _apply(self, path: Path, job: Job, payload: Sequence, embed) -> tuple[dict, np.ndarray]:
        """The job's result, and the embeddings of the chunks it added."""
        in_milvus = path.parent.name == MILVUS_JOBS
        chunks, vectors, version = await asyncio.to_thread(self._read_milvus if in_milvus else read_current, path)
        existing = {c.doc_id for c in chunks}
        if job.kind == "upsert":
            docs = [Document(id=d.id, title=d.title or d.id, text=d.text,
                             metadata={k: str(v) for k, v in d.metadata.items()}) for d in payload]
            touched = {d.id for d in docs}
            missing: list[str] = []
        else:
            docs = []
            touched = set(payload) & existing
            missing = sorted(set(payload) - existing)
            if not touched:
                return {"version": version, "changed_documents": [], "missing": missing,
                        "swapped": False}, np.zeros((0, 0), np.float32)
        keep = [i for i, c in enumerate(chunks) if c.doc_id not in touched]
        new_chunks = list(chunk_documents(docs, self.chunk_size, self.overlap))
        job.progress = {"chunks_embedded": 0, "chunks_to_embed": len(new_chunks)}
        self._save(job)
        new_vectors = []
        for start in range(0, len(new_chunks), EMBED_BATCH):
            batch = new_chunks[start:start + EMBED_BATCH]
            new_vectors.append(np.asarray(await embed([embedding_text(c) for c in batch]), dtype=np.float32))
            job.progress = {"chunks_embedded": start + len(batch), "chunks_to_embed": len(new_chunks)}
            self._save(job)
        all_chunks = [chunks[i] for i in keep] + new_chunks
        if not all_chunks:
            raise BadRequest("ids", "deleting these would leave the collection empty; drop it instead")
        dim = vectors.shape[1] if len(vectors) else (new_vectors[0].shape[1] if new_vectors else 0)
        matrix = np.concatenate([vectors[keep].reshape(-1, dim)] + new_vectors) if dim else vectors
        if in_milvus:
            assert self.milvus is not None
            manifest, name = await asyncio.to_thread(
                self.milvus.write_version, path.name, all_chunks, matrix, embedding_model=self.embedding_model,
                chunk_size=self.chunk_size, chunk_overlap=self.overlap)
        else:
            manifest, name = await asyncio.to_thread(self._write_version, path, all_chunks, matrix)
        return {"version": manifest.index_version, "previous_version": version, "folder": name,
                "changed_documents": sorted(touched),
                "added_documents": sorted({d.id for d in docs} - existing), "missing": missing,
                "chunks": manifest.vector_count, "documents": manifest.document_count, "swapped": True}, \
            np.concatenate(new_vectors) if new_vectors else np.zeros((0, 0), np.float32)

    def _write_version(self, path: Path, chunks: list[Chunk], vectors: np.ndarray) -> tuple[IndexManifest, str]:
        from index import store  # FAISS: loaded by the first job, not at service start
        versions = path / VERSIONS
        served = sorted(p.name for p in versions.iterdir() if p.name.startswith("v"))
        name = f"v{int(served[-1][1:]) + 1 if served else 1:06d}"
        index_type = "flat" if len(chunks) <= FLAT_MAX else "hnsw"
        manifest = store.write(versions / name, chunks, vectors, embedding_model=self.embedding_model,
                               index_type=index_type, chunk_size=self.chunk_size, chunk_overlap=self.overlap,
                               source=f"collection {path.name}")
        write_atomic(path / CURRENT, name + "\n")  # the swap: readers load the new version from here on
        self._collect(path, keep={name, *served[-1:]})
        return manifest, name

    def _read_milvus(self, path: Path) -> tuple[list[Chunk], np.ndarray, str | None]:
        assert self.milvus is not None
        served = self.milvus.served(path.name)
        if served is None:
            return [], np.zeros((0, 0), dtype=np.float32), None
        manifest = self.milvus.manifest(served)
        chunks, vectors = self.milvus.read(served)
        return chunks, vectors, manifest.index_version

    @staticmethod
    def _collect(path: Path, keep: set[str]) -> None:
        """Remove versions other than the served and the previous one, and leftovers of killed writes."""
        for old in (path / VERSIONS).iterdir():
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    async def wait(self) -> None:
        """Until every job started here has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def read_current(path: Path) -> tuple[list[Chunk], np.ndarray, str | None]:
    """Chunks, vectors and index_version of the served version (empty before the first)."""
    import faiss

    folder = current_folder(path)
    if folder is None:
        return [], np.zeros((0, 0), dtype=np.float32), None
    manifest = IndexManifest.read(folder)
    index = faiss.read_index(str(folder / INDEX_FILE))
    vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, manifest.dimension), np.float32)
    with (folder / CHUNKS_FILE).open() as f:
        chunks = [Chunk.model_validate_json(line) for line in f if line.strip()]
    return chunks, np.asarray(vectors, dtype=np.float32), manifest.index_version
