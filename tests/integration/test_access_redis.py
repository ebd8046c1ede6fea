"""Rate limits and token quotas counted in a real Redis: shared by every gate (worker or replica)
that uses it, and kept when a gate restarts."""

from __future__ import annotations

import asyncio

import pytest

from pipelines.api.access import Denied, Gate, add_key, load_keys


def test_two_gates_on_one_redis_share_the_rate(redis_server, tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "shared", "acme", rate="4/minute")
    keys = load_keys(path)
    namespace = f"t{tmp_path.name[-8:]}"

    async def go():
        a, b = Gate(keys, redis_server.url, namespace), Gate(keys, redis_server.url, namespace)
        caller = a.authenticate(f"Bearer {key}")
        statuses = []
        for gate in (a, b, a, b, a, b):
            try:
                await gate.admit(caller)
                statuses.append(200)
            except Denied as exc:
                assert exc.status == 429 and "rate limit" in str(exc) and exc.retry_after_s >= 1
                statuses.append(429)
        return statuses

    assert asyncio.run(go()) == [200, 200, 200, 200, 429, 429]  # one count across both gates


def test_two_gates_and_a_restarted_one_share_the_token_quota(redis_server, tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "shared", "acme", tokens_per_day=100)  # no rate: only the quota can refuse
    keys = load_keys(path)
    namespace = f"t{tmp_path.name[-8:]}"

    async def go():
        a, b = (Gate(keys, redis_server.url, namespace, reserve_tokens=30) for _ in range(2))
        caller = a.authenticate(f"Bearer {key}")
        _, first = await a.admit(caller)
        _, second = await b.admit(caller)  # 30 reserved by a: 30 < 100
        await a.settle(caller, first, 70)
        await b.settle(caller, second, 40)  # 110 charged in all: over the quota
        c = Gate(keys, redis_server.url, namespace, reserve_tokens=30)  # a new gate (a restarted replica)
        with pytest.raises(Denied) as info:
            await c.admit(caller)
        return await c.used(caller), info.value

    used, refused = asyncio.run(go())
    assert used == 110 and refused.status == 429 and "quota" in str(refused)


def test_concurrent_admissions_on_two_gates_reserve_atomically(redis_server, tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "shared", "acme", tokens_per_day=1000)
    keys = load_keys(path)
    namespace = f"t{tmp_path.name[-8:]}"

    async def go():
        gates = [Gate(keys, redis_server.url, namespace, reserve_tokens=300) for _ in range(2)]
        caller = gates[0].authenticate(f"Bearer {key}")

        async def one(gate):
            try:
                return (await gate.admit(caller))[1]
            except Denied:
                return None

        got = await asyncio.gather(*(one(gates[i % 2]) for i in range(32)))
        return [r for r in got if r is not None], await gates[0].used(caller)

    admitted, used = asyncio.run(go())
    assert len(admitted) == 4 and used == 1200  # 0, 300, 600, 900 < 1000: four reservations, not 32


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
