"""GreedyBatcher: the Embedding service's query-path batching (no wait for a lone call)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from pipelines.query.embed import GreedyBatcher


class SlowModel:
    """Vectors that encode each text's length; records the batches it was given."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        return np.array([[len(t), i] for i, t in enumerate(texts)], dtype=np.float32)


def test_a_lone_call_runs_at_once_and_gets_its_rows():
    model = SlowModel()
    batcher = GreedyBatcher(model)

    async def main():
        t0 = time.perf_counter()
        out = await batcher.encode(["abc", "de"])
        return out, time.perf_counter() - t0

    out, seconds = asyncio.run(main())
    assert out[:, 0].tolist() == [3.0, 2.0]
    assert model.batches == [["abc", "de"]]
    assert seconds < 0.05  # no batching window
    assert all(name.startswith("embed") for name in model.threads)  # off the event loop


def test_calls_that_arrive_while_the_model_works_share_the_next_run():
    model = SlowModel(seconds=0.05)
    batcher = GreedyBatcher(model)

    async def main():
        first = asyncio.create_task(batcher.encode(["x" * 1]))
        await asyncio.sleep(0.01)  # the first run is busy now
        rest = [asyncio.create_task(batcher.encode(["y" * n])) for n in range(2, 12)]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    assert first[:, 0].tolist() == [1.0]
    assert [r[:, 0].tolist() for r in rest] == [[float(n)] for n in range(2, 12)]  # each caller its own row
    assert len(model.batches) == 2 and len(model.batches[1]) == 10
    assert batcher.runs == 2


def test_runs_keep_arrival_order_never_exceed_max_batch_and_never_split_a_call():
    model = SlowModel(seconds=0.02)
    batcher = GreedyBatcher(model, max_batch=4)

    async def main():
        blocker = asyncio.create_task(batcher.encode(["a"]))
        await asyncio.sleep(0.005)
        calls = [asyncio.create_task(batcher.encode(["b"] * k)) for k in (3, 2, 6, 1)]
        await blocker
        return await asyncio.gather(*calls)

    outs = asyncio.run(main())
    assert [len(o) for o in outs] == [3, 2, 6, 1]
    sizes = [len(b) for b in model.batches]
    assert sizes == [1, 3, 2, 6, 1]  # first come, first served: 3 | 2 (+6 would pass 4) | 6 alone, whole | 1


def test_a_model_error_reaches_every_caller_of_that_run_and_the_next_run_works():
    calls = {"n": 0}

    def flaky(texts: list[str]) -> np.ndarray:
        calls["n"] += 1
        time.sleep(0.02)
        if calls["n"] == 1:
            raise RuntimeError("model exploded")
        return np.zeros((len(texts), 2), dtype=np.float32)

    batcher = GreedyBatcher(flaky)

    async def main():
        results = await asyncio.gather(batcher.encode(["a"]), batcher.encode(["b"]), return_exceptions=True)
        after = await batcher.encode(["c"])
        return results, after

    results, after = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
    assert after.shape == (1, 2)


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        GreedyBatcher(SlowModel(), max_batch=0)
