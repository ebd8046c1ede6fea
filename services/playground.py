"""The playground page (``GET /playground``; mounted at ``/`` after ``/v1``, so BentoML's own
routes and ``/v1`` come first, and ``/playground`` is answered without a redirect): ask a question, watch the answer stream, see the
sources, the route, the cache verdict and each stage against its budget. One static HTML file
with its script inline (no build step, no external assets: it works offline); it talks to
``/v1/chat/completions`` like any other client."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PAGE = Path(__file__).with_name("playground.html").read_bytes()


async def _page(request: Request) -> Response:
    return Response(PAGE, media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-cache", "Content-Security-Policy":
                             "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"})


app = Starlette(routes=[Route("/playground", _page, methods=["GET"])])
