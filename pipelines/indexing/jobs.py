"""The ingestion API's records: request bodies (bounded, ``extra="forbid"``), job records, and
where job records are kept (:class:`JobRecords`: a file beside the collection, and in Redis too
when REDIS_URL is set, so any replica answers for any job)."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from common.errors import BadRequest, NotFound, RagrouteError
from index.layout import NAME

log = logging.getLogger("pipelines.indexing.ingest")

JOBS = "jobs"
MAX_DOC_CHARS = 1_000_000
MAX_DOCS_PER_JOB = 1000
MAX_IDS_PER_DELETE = 10_000
EMBED_BATCH = 64
FLAT_MAX = 100_000  # exact search up to here (~7 ms a query at 100k on one core), HNSW beyond: evals/index_scale.py
JOB_ID = re.compile(r"^[0-9a-f]{16}$")
JOB_TTL_S = 7 * 86400  # how long Redis keeps a job's record
HEARTBEAT_S = 5.0  # a queued or running job's record is re-saved this often (with Redis)
STALE_S = 60.0  # ... so one unchanged for this long belongs to a process that is gone

DocId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,255}$")]
Metadata = dict[Annotated[str, StringConstraints(max_length=64)],
                str | int | float]


class Conflict(RagrouteError):
    status = 409


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: DocId = Field(description="1-256 chars [A-Za-z0-9_.:/@+-], starting alphanumeric; an existing id is replaced")
    title: Annotated[str, StringConstraints(max_length=500)] = ""
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_DOC_CHARS)]
    metadata: Annotated[Metadata, Field(max_length=32)] = Field(default_factory=dict)


class UpsertBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: Annotated[list[DocumentIn], Field(min_length=1, max_length=MAX_DOCS_PER_JOB)]


class DeleteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: Annotated[list[DocId], Field(min_length=1, max_length=MAX_IDS_PER_DELETE)]


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=NAME.pattern)]
    backend: Literal["faiss", "milvus"] | None = Field(
        None, description="where its vectors live; default RAGROUTE_VECTOR_STORE (faiss)")


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    collection: str
    kind: Literal["upsert", "delete"]
    status: Literal["queued", "running", "succeeded", "failed"] = "queued"
    documents: int = 0
    progress: dict[str, int] = Field(default_factory=lambda: {"chunks_embedded": 0, "chunks_to_embed": 0})
    result: dict[str, Any] | None = None
    error: str | None = None
    pid: int = Field(default_factory=os.getpid)
    pid_started: str | None = Field(default_factory=lambda: process_started(os.getpid()))
    """when that process started (/proc): a pid reused by another process after a restart is not the job's"""
    host: str = Field(default_factory=socket.gethostname)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def process_started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat, field 22), None
    where there is no /proc: with the pid it names one process, even once the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` still runs, and (``started`` given) is the one that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or process_started(pid) in (None, started)


MILVUS_JOBS = ".milvus"  # <root>/.milvus/<name>/jobs: job records of Milvus collections run here


class JobRecords:
    """Job records: one file per job beside its collection (``save``'s ``path``), and with Redis a
    copy under ``<namespace>:jobs:<id>`` (kept JOB_TTL_S) that any replica reads."""

    def __init__(self, root: Path, redis_url: str = "", namespace: str = "ragroute") -> None:
        self.root = root
        self._redis = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._key = f"{namespace}:jobs:"

    @property
    def shared(self) -> bool:
        """Records are in Redis too (then a running job's record is re-saved every HEARTBEAT_S)."""
        return self._redis is not None

    def save(self, job: Job, path: Path) -> None:
        job.updated_at = time.time()
        if path.parent.is_dir():  # a dropped collection takes its job records with it
            write_atomic(path, job.model_dump_json())
        if self._redis is not None:
            try:
                self._redis.set(self._key + job.id, job.model_dump_json(), ex=JOB_TTL_S)
            except Exception as exc:  # noqa: BLE001 - the local record stands; other replicas cannot see it
                log.warning("job %s: record not saved in Redis (%s); only this replica can report it", job.id, exc)

    def get(self, job_id: str) -> Job:
        if not JOB_ID.fullmatch(job_id):
            raise BadRequest("job_id", "16 hexadecimal characters")
        for path in [*self.root.glob(f"*/{JOBS}/{job_id}.json"),
                     *self.root.glob(f"{MILVUS_JOBS}/*/{JOBS}/{job_id}.json")]:
            return judged(Job.model_validate_json(path.read_text()))
        raw = None
        if self._redis is not None:
            try:
                raw = self._redis.get(self._key + job_id)
            except Exception as exc:  # noqa: BLE001 - answered from this replica's records only
                log.warning("job %s: Redis unavailable (%s)", job_id, exc)
        if raw:
            return judged(Job.model_validate_json(raw))
        raise NotFound("job_id", f"no job {job_id}")


def judged(job: Job) -> Job:
    """A queued or running job whose process is gone reads as failed."""
    if job.status not in ("queued", "running"):
        return job
    if job.host == socket.gethostname():
        if not alive(job.pid, job.pid_started):
            job.status, job.error = "failed", f"interrupted: the process doing it (pid {job.pid}) exited"
    elif time.time() - job.updated_at > STALE_S:
        job.status, job.error = "failed", (f"interrupted: no word from the process doing it (pid {job.pid} on "
                                           f"{job.host}) for {time.time() - job.updated_at:.0f} s")
    return job


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """The body as ``model``: BadRequest naming the first wrong field otherwise."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(where, f"{first['msg']} ({exc.error_count()} error(s))") from None


def describe(job: Job) -> dict:
    return json.loads(job.model_dump_json())
