"""ASGI middleware: a request body over its limit is a 413 before anything parses it.

Every POST/PUT/PATCH to the entry service passes here first (``rag_query``, ``/v1``, the admin
APIs, ``/ingest``). A declared ``Content-Length`` over the limit is refused without reading the
body; a chunked body, or one longer than it declared, is read only up to the limit and then
refused. A body within the limit is handed on whole (replayed to the app), so a limit holds
whatever the app behind does with ``receive``. The limits are settings
(``RAGROUTE_MAX_BODY_BYTES``, ``RAGROUTE_INGEST_MAX_BODY_BYTES``); the 413's body has the shape
of the API it was sent to (OpenAI's under ``/v1``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def too_large(path: str, limit: int) -> bytes:
    message = f"the request body is over the limit of {limit} bytes"
    if path.startswith("/v1/"):
        body: dict = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                "code": "request_too_large"}}
    else:
        body = {"error": message, "field": "body"}
    return json.dumps(body).encode()


class BodyLimit:
    """``limit_for(path)``: the limit in bytes for a request to ``path``."""

    def __init__(self, app, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.limit_for(path)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            await self._refuse(send, path, limit, f"declared {declared[:20]!r}")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await self._refuse(send, path, limit, "read past it")
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    @staticmethod
    async def _refuse(send, path: str, limit: int, how: str) -> None:
        log.info("%s: body over %d bytes (%s); refused with 413", path, limit, how)
        body = too_large(path, limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then what the server says next (a disconnect)

    return replay
