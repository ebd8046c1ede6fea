"""Server-sent events for a streamed ``rag_query``: each pipeline event becomes one frame; a
failure after the response has started (its status is sent) becomes an ``error`` frame."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pipelines.errors import public_message

log = logging.getLogger(__name__)

Event = dict[str, Any]


def frame(event: Event) -> str:
    return f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"


async def frames(first: Event, events: AsyncIterator[Event], request_id: str,
                 on_done: Callable[[Event], Awaitable[Event]],
                 on_abandoned: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[str]:
    """``first`` (already taken from ``events``, so that a failure before it could still be a
    proper status code), then the rest; ``on_done`` sees the ``done`` event before it is sent
    (the front door settles the request's tokens and may add warnings). ``events`` is closed
    however this ends, a client hanging up included; a stream that ends before ``done`` was
    settled (a hang-up, a failure) is handed to ``on_abandoned`` (charged what it cost)."""
    event = first
    settled = False
    try:
        while True:
            if event["event"] == "done":
                event = await on_done(event)
                settled = True
            yield frame(event)
            event = await anext(events)
    except StopAsyncIteration:
        return
    except Exception as exc:  # noqa: BLE001 - the status is sent: report the error as an event
        log.warning("request %s: stream failed: %s", request_id, exc)
        yield frame({"event": "error", "request_id": request_id, "error": public_message(exc)})
    finally:
        if not settled and on_abandoned is not None:
            detach(on_abandoned())
        await events.aclose()


_detached: set[asyncio.Task] = set()


def detach(work: Awaitable[None]) -> None:
    """Run ``work`` in a task of its own: a stream whose client hung up is being cancelled (its
    cancel scope cancels every await that follows), and its charge must still happen."""
    task = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
    _detached.add(task)  # held until done (the loop keeps only weak references)
    task.add_done_callback(_detached.discard)
