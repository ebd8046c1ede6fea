"""The SSE frames of a streamed rag_query (pipelines/api/sse.py): one frame per event, the ``done``
event settled before it is sent, a failure after the start an ``error`` frame, and the pipeline's
stream closed however it ends."""

from __future__ import annotations

import asyncio
import json

import pytest

from common.errors import INTERNAL, StageError
from pipelines.api.sse import frames


class Events:
    def __init__(self, items, fail_with: Exception | None = None) -> None:
        self.items, self.fail_with, self.closed = list(items), fail_with, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.items:
            return self.items.pop(0)
        if self.fail_with is not None:
            raise self.fail_with
        raise StopAsyncIteration

    async def aclose(self):
        self.closed = True


def parse(frame: str) -> tuple[str, dict]:
    head, data = frame.strip().split("\n")
    return head.removeprefix("event: "), json.loads(data.removeprefix("data: "))


async def collect(events: Events, on_done=None, take: int | None = None) -> list[str]:
    async def settle(event):
        return {**event, "settled": True}

    first = await anext(events)
    out = []
    gen = frames(first, events, "req1", on_done or settle)
    async for f in gen:
        out.append(f)
        if take is not None and len(out) >= take:
            await gen.aclose()  # the client hung up
            break
    return out


def test_each_event_is_a_frame_and_done_is_settled_first():
    events = Events([{"event": "meta", "request_id": "req1"}, {"event": "token", "text": "Hi"},
                     {"event": "done", "response": {"answer": "Hi"}}])
    out = [parse(f) for f in asyncio.run(collect(events))]
    assert [k for k, _ in out] == ["meta", "token", "done"]
    assert out[1][1]["text"] == "Hi" and out[2][1]["settled"] and events.closed


def test_a_failure_mid_stream_is_an_error_frame_naming_the_request():
    events = Events([{"event": "meta"}, {"event": "token", "text": "Hi"}],
                    fail_with=RuntimeError("engine died at 10.0.0.7:8000"))
    out = [parse(f) for f in asyncio.run(collect(events))]
    assert [k for k, _ in out] == ["meta", "token", "error"]
    # not our error: its text (a host, a path) stays in the log; the client gets a fixed message
    assert out[-1][1] == {"event": "error", "request_id": "req1", "error": INTERNAL} and events.closed
    events = Events([{"event": "meta"}], fail_with=StageError("generate[large]", "timed out", "http://10.0.0.7:8000"))
    assert [parse(f) for f in asyncio.run(collect(events))][-1][1]["error"] == "generate[large] stage failed: timed out"


def test_a_client_hanging_up_closes_the_pipeline_stream():
    events = Events([{"event": "meta"}, {"event": "token", "text": "a"}, {"event": "token", "text": "b"}])
    out = asyncio.run(collect(events, take=2))
    assert len(out) == 2 and events.closed


def test_a_stream_outlives_its_client_and_is_charged_once_at_its_end():
    from pipelines.api.sse import outliving

    produced, charged = [], []

    async def pipeline():
        for i in range(5):
            await asyncio.sleep(0.01)
            produced.append(i)
            yield {"event": "token", "n": i}

    async def charge():
        charged.append(list(produced))  # what had been produced when the charge was made

    async def client_hangs_up_after_two():
        stream = outliving(pipeline(), charge)
        got = [await anext(stream), await anext(stream)]
        await stream.aclose()  # the client is gone
        await asyncio.sleep(0.2)  # the pipeline runs on, unseen
        return got

    got = asyncio.run(client_hangs_up_after_two())
    assert [e["n"] for e in got] == [0, 1]
    assert produced == [0, 1, 2, 3, 4] and charged == [[0, 1, 2, 3, 4]]  # the whole answer, charged once

    charged.clear()

    async def client_stays():
        return [e async for e in outliving(pipeline(), charge)]

    assert len(asyncio.run(client_stays())) == 5 and charged == []  # delivered: settled by the done event

    async def broken():
        yield {"event": "meta"}
        raise StageError("generate[small]", "timed out")

    async def client_of_a_failure():
        out = []
        with pytest.raises(StageError):
            async for e in outliving(broken(), charge):
                out.append(e)
        await asyncio.sleep(0.01)
        return out

    assert asyncio.run(client_of_a_failure()) == [{"event": "meta"}] and len(charged) == 1  # failed: charged
