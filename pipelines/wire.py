"""The wire protocol between the RAG service and the stage services: typed records for what the
stage APIs return, the Generation service's stream events, and stage failures.

One mapping turns an error into what travels: :func:`failure` (a :class:`StageFailure` with the
error's HTTP status; a stage failure inside a stage service is sent in the body, as a 5xx's text
would be hidden by BentoML). The other way, :meth:`StageFailure.raise_for` turns it back into a
:class:`~pipelines.errors.StageError` naming the stage.

    search / search_text    -> SearchResult {"index_version", "hits": [ScoredChunk]}
    rerank                  -> [ScoredChunk]
    route                   -> RouteDecision
    generate                -> GenerateResult {"generation": TierAnswer} | StageFailure {"error", "status"}
    generate_stream (NDJSON, one event per line):
        TextEvent {"t": "..."}  ...  then FinalEvent {"final": TierAnswer} | StageFailure {"error", "status"}

:class:`NdjsonReader` parses the stream from chunks split anywhere.
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.errors import RagrouteError, StageError
from pipelines.records import ScoredChunk, TierAnswer


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchResult(_Wire):
    index_version: str
    hits: list[ScoredChunk]


class GenerateResult(_Wire):
    generation: TierAnswer


class StageFailure(_Wire):
    """A stage that failed, in a body or as the last event of a stream."""

    error: Annotated[str, Field(max_length=10_000)]
    status: Annotated[int, Field(ge=400, le=599)] = 503

    def raise_for(self, stage: str) -> None:
        raise StageError(stage, self.error)


class TextEvent(_Wire):
    t: str


class FinalEvent(_Wire):
    final: TierAnswer


StreamEvent = TextEvent | FinalEvent | StageFailure


def failure(exc: Exception) -> StageFailure:
    """The one mapping from an error to what travels: our errors keep their status and message;
    anything else is an engine failure (503)."""
    if isinstance(exc, RagrouteError):
        return StageFailure(error=getattr(exc, "message", str(exc)), status=exc.status)
    return StageFailure(error=f"engine error: {type(exc).__name__}: {exc}", status=503)


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
