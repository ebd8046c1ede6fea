"""One exception tree for ragroute, each class carrying the HTTP status it maps to.

    RagrouteError (500)
    ├── BadRequest (400)          the caller sent something we refuse; names the field
    ├── NotFound (404)            the caller named something that does not exist (a collection)
    ├── ConfigError (500)         a setting is invalid; raised at start-up, names the key
    ├── ArtifactError (500)       an index/model on disk fails its manifest or sha256 check
    └── StageError (503)          a pipeline stage (a dependency service) failed or timed out
        ├── UpstreamError (502)   a remote engine (OpenAI-compatible endpoint) failed or timed out
        └── Overloaded (503)      no tier can answer in time, and the client wants no degraded answer

Services map these to responses in one place (services/_common.py: error_body), and to what
travels between services in another (pipelines/api/wire.py: failure).

What a client reads is ``str(exc)`` of our errors (:func:`public_message`): messages written for
clients, never an upstream URL, a Milvus URI, a host:port or another library's exception text.
Those go in a StageError's ``detail``, which is logged where the error is raised and never sent.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

INTERNAL = "internal error (details in the service's log)"


class RagrouteError(Exception):
    status: int = 500


class BadRequest(RagrouteError):
    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(BadRequest):
    status = 404


class ConfigError(RagrouteError):
    pass


class ArtifactError(RagrouteError):
    pass


class StageError(RagrouteError):
    status = 503

    def __init__(self, stage: str, message: str, detail: str = "") -> None:
        super().__init__(f"{stage} stage failed: {message}")
        self.stage = stage
        self.message = message
        self.detail = detail  # for the log only
        if detail:
            log.warning("%s stage failed: %s (%s)", stage, message, detail)


class UpstreamError(StageError):
    status = 502


class Overloaded(StageError):
    """No tier can answer in time and the client asked for no degraded answer: 503 with Retry-After."""

    status = 503

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__("generate", message)
        self.retry_after_s = retry_after_s


def public_message(exc: BaseException) -> str:
    """What a client may read about ``exc``: our errors' own messages, a fixed text for anything else."""
    return str(exc) if isinstance(exc, RagrouteError) else INTERNAL
