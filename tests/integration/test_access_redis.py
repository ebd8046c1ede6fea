"""Rate limits and token quotas counted in a real Redis: shared by every gate (worker or replica)
that uses it, and kept when a gate restarts."""

from __future__ import annotations

import asyncio

import pytest

from pipelines.access import Denied, Gate, add_key, load_keys


def test_two_gates_on_one_redis_share_the_rate_and_the_quota(redis_server, tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "shared", "acme", rate="4/minute", tokens_per_day=100)
    keys = load_keys(path)
    namespace = f"t{tmp_path.name[-8:]}"

    async def go():
        a, b = Gate(keys, redis_server.url, namespace), Gate(keys, redis_server.url, namespace)
        caller = a.authenticate(f"Bearer {key}")
        admitted = 0
        for gate in (a, b, a, b, a, b):
            try:
                assert await gate.admit(caller) == []
                admitted += 1
            except Denied as exc:
                assert exc.status == 429 and exc.retry_after_s >= 1
        await a.charge(caller, 70)
        await b.charge(caller, 40)
        # a new gate (a restarted replica) sees what the others counted
        c = Gate(keys, redis_server.url, namespace)
        with pytest.raises(Denied) as info:
            await c.admit(caller)
        return admitted, info.value

    admitted, refused = asyncio.run(go())
    assert admitted == 4 and refused.status == 429


def test_a_gate_without_redis_counts_only_its_own_requests(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "local", "acme", rate="2/minute")
    keys = load_keys(path)

    async def go():
        a, b = Gate(keys), Gate(keys)
        caller = a.authenticate(f"Bearer {key}")
        for gate in (a, a, b, b):
            await gate.admit(caller)  # 2 each: per process, as documented
        with pytest.raises(Denied):
            await a.admit(caller)

    asyncio.run(go())
