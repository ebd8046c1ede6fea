"""The wire protocol between the RAG service and the stage services: typed records for what the
stage APIs return, the Generation service's stream events, and stage failures.

One mapping turns an error into what travels: :func:`failure` (a :class:`StageFailure` with the
error's HTTP status; a stage failure inside a stage service is sent in the body, as a 5xx's text
would be hidden by BentoML). The other way, :meth:`StageFailure.raise_for` turns it back into a
:class:`~common.errors.StageError` naming the stage.

    search / search_text    -> SearchResult {"index_version", "hits": [ScoredChunk]}
    rerank                  -> [ScoredChunk]
    route                   -> RouteDecision
    generate                -> GenerateResult {"generation": TierAnswer} | StageFailure {"error", "status"}
    generate_stream (NDJSON, one event per line):
        TextEvent {"t": "..."}  ...  then FinalEvent {"final": TierAnswer} | StageFailure {"error", "status"}

:class:`NdjsonReader` parses the stream from chunks split anywhere.
"""

from __future__ import annotations

import logging

import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import RagrouteError, StageError
from common.records import ScoredChunk, Tier, TierAnswer
from pipelines.engines.load import Capacity

log = logging.getLogger(__name__)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Request(BaseModel):
    """A stage API's input (the service's ``input_spec``): bounded, nothing else accepted."""

    model_config = ConfigDict(extra="forbid")


Query = Annotated[str, Field(max_length=20_000)]
Count = Annotated[int, Field(ge=1, le=1000)]
Collection = Annotated[str, Field(max_length=64)]


class SearchRequest(_Request):
    vector: Annotated[list[float], Field(max_length=8192)]
    n: Count = 20
    query: Query = ""
    collection: Collection = "default"


class SearchTextRequest(_Request):
    query: Query
    n: Count = 20
    collection: Collection = "default"


class RerankRequest(_Request):
    query: Query
    candidates: Annotated[list[ScoredChunk], Field(max_length=1000)]
    top_k: Count = 4


class RouteRequest(_Request):
    query: Query
    query_vector: Annotated[list[float], Field(max_length=8192)] | None = None
    retrieval_scores: Annotated[list[float], Field(max_length=1000)] = []
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None


class GenerateRequest(_Request):
    tier: Tier
    query: Query
    sources: Annotated[list[ScoredChunk], Field(max_length=100)]
    budget_ms: Annotated[float, Field(ge=1, le=600_000)] | None = Field(
        None, description="the time the answer may take from now; it becomes a token limit")


class SearchResult(_Wire):
    index_version: str
    hits: list[ScoredChunk]


class GenerateResult(_Wire):
    generation: TierAnswer


class StageFailure(_Wire):
    """A stage that failed, in a body or as the last event of a stream."""

    error: Annotated[str, Field(max_length=10_000)]
    status: Annotated[int, Field(ge=400, le=599)] = 503
    capacity_wait_s: Annotated[float, Field(ge=0)] | None = None
    """set when the tier refused for capacity (pipelines/engines/load.py): how long until it could start one"""
    capacity_finish_s: Annotated[float, Field(ge=0)] | None = None
    """... and when the refused request would have finished"""

    def raise_for(self, stage: str) -> None:
        if self.capacity_wait_s is not None:
            raise Capacity(stage, self.error.removeprefix("capacity: "), self.capacity_wait_s, self.capacity_finish_s)
        raise StageError(stage, self.error)


class TextEvent(_Wire):
    t: str
    p: int = 0  # the generation's prompt tokens
    n: int = 0  # tokens decoded so far (what the request has cost if its stream ends here)


class FinalEvent(_Wire):
    final: TierAnswer


StreamEvent = TextEvent | FinalEvent | StageFailure


def failure(exc: Exception) -> StageFailure:
    """The one mapping from an error to what travels: our errors keep their status and message;
    anything else is an engine failure (503)."""
    if isinstance(exc, Capacity):
        return StageFailure(error=exc.message, status=exc.status, capacity_wait_s=round(exc.wait_s, 3),
                            capacity_finish_s=None if exc.finish_s is None else round(exc.finish_s, 3))
    if isinstance(exc, RagrouteError):
        return StageFailure(error=getattr(exc, "message", str(exc)), status=exc.status)
    log.warning("engine error: %s: %s", type(exc).__name__, exc)  # the text stays here; the caller reads the kind
    return StageFailure(error=f"engine error ({type(exc).__name__})", status=503)


def line(event: StreamEvent) -> str:
    """One NDJSON line of the TierAnswer stream."""
    return event.model_dump_json() + "\n"


def parse_generate(body: dict, stage: str) -> TierAnswer:
    """``generate``'s body: the answer, or StageError naming ``stage``."""
    if "error" in body:
        StageFailure.model_validate(body).raise_for(stage)
    return GenerateResult.model_validate(body).generation


def parse_event(raw: str) -> StreamEvent:
    """One line of the stream; ValueError for a line that is none of the events."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"not JSON: {raw[:80]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"not an event: {raw[:80]!r}")
    kind = TextEvent if "t" in data else FinalEvent if "final" in data else StageFailure if "error" in data else None
    if kind is None:
        raise ValueError(f"unknown stream event: {raw[:80]!r}")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"malformed {kind.__name__}: {exc.errors()[0]['msg']}") from None


class NdjsonReader:
    """Events from a byte/str stream split anywhere (a line may span chunks)."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, chunk: bytes | str) -> list[StreamEvent]:
        self._buffer += chunk.decode() if isinstance(chunk, bytes) else str(chunk)
        *lines, self._buffer = self._buffer.split("\n")
        return [parse_event(raw) for raw in lines if raw.strip()]
