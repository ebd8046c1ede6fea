"""Server-sent events for a streamed ``rag_query``: each pipeline event becomes one frame; a
failure after the response has started (its status is sent) becomes an ``error`` frame."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Event = dict[str, Any]


def frame(event: Event) -> str:
    return f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"


async def frames(first: Event, events: AsyncIterator[Event], request_id: str,
                 on_done: Callable[[Event], Awaitable[Event]]) -> AsyncIterator[str]:
    """``first`` (already taken from ``events``, so that a failure before it could still be a
    proper status code), then the rest; ``on_done`` sees the ``done`` event before it is sent
    (the front door settles the request's tokens and may add warnings). ``events`` is closed
    however this ends, a client hanging up included."""
    event = first
    try:
        while True:
            if event["event"] == "done":
                event = await on_done(event)
            yield frame(event)
            event = await anext(events)
    except StopAsyncIteration:
        return
    except Exception as exc:  # noqa: BLE001 - the status is sent: report the error as an event
        log.warning("request %s: stream failed: %s", request_id, exc)
        yield frame({"event": "error", "request_id": request_id, "error": str(exc)})
    finally:
        await events.aclose()
