"""Server-sent events for a streamed ``rag_query``: each pipeline event becomes one frame; a
failure after the response has started (its status is sent) becomes an ``error`` frame."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from common.errors import public_message

log = logging.getLogger(__name__)

Event = dict[str, Any]


def frame(event: Event) -> str:
    return f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"


async def frames(first: Event, events: AsyncIterator[Event], request_id: str,
                 on_done: Callable[[Event], Awaitable[Event]]) -> AsyncIterator[str]:
    """``first`` (already taken from ``events``, so that a failure before it could still be a
    proper status code), then the rest; ``on_done`` sees the ``done`` event before it is sent
    (the front door settles the request's tokens and may add warnings). ``events`` is closed
    however this ends, a client hanging up included (:func:`outliving` charges what the
    request cost then)."""
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
        yield frame({"event": "error", "request_id": request_id, "error": public_message(exc)})
    finally:
        await events.aclose()


_detached: set[asyncio.Task] = set()


def detach(work: Awaitable[None]) -> None:
    """Run ``work`` in a task of its own: a stream whose client hung up is being cancelled (its
    cancel scope cancels every await that follows), and its charge must still happen."""
    task = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
    _detached.add(task)  # held until done (the loop keeps only weak references)
    task.add_done_callback(_detached.discard)


_END = object()


async def outliving(events: AsyncIterator[Event], on_abandoned: Callable[[], Awaitable[None]]
                    ) -> AsyncIterator[Event]:
    """``events``, consumed in a task of their own that runs them to the end even when the client
    hangs up: the answer the engine is generating anyway is finished (and cached), and the
    request is charged exactly what it cost (``on_abandoned``, once the stream has ended, if the
    client left before the end or the stream failed; it must charge a request only once). A client hanging up cancels its response's task, and with
    it every await of the stream's clean-up: the generation would go on unseen and uncharged."""
    queue: asyncio.Queue = asyncio.Queue()
    listening = True

    async def pump() -> None:
        failed = False
        try:
            async for event in events:
                if listening:
                    queue.put_nowait(event)
            queue.put_nowait(_END)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            failed = True
            queue.put_nowait(exc)
        finally:
            if failed or not listening:  # no done event reaches the client: charge here (once)
                await on_abandoned()

    detach(pump())
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        listening = False
