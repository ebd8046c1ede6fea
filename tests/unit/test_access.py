"""API keys, tenants, rate limits and token quotas (in-process counters); the /v1 and REST
refusals' shapes are tested in test_openai_compat.py and tests/e2e/test_api_contract.py."""

from __future__ import annotations

import asyncio
import time
import json
import stat

import pytest

from common.errors import ConfigError
from pipelines.api.access import Denied, Gate, add_key, hash_key, load_keys


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "keys.json"
    keys = {"acme": add_key(path, "acme-web", "acme", rate="3/minute", tokens_per_day=100),
            "globex": add_key(path, "globex", "globex")}
    return path, keys


def test_the_key_file_holds_hashes_only_and_is_private(keyfile):
    path, keys = keyfile
    text = path.read_text()
    assert keys["acme"] not in text and hash_key(keys["acme"]) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [k.tenant for k in load_keys(path)] == ["acme", "globex"]
    with pytest.raises(ConfigError, match="already"):
        add_key(path, "acme-web", "acme")


@pytest.mark.parametrize("content, complaint", [
    ("{not json", "Invalid JSON"),
    (json.dumps({"keys": [{"name": "a", "sha256": "abc", "tenant": "t"}]}), "keys.0.sha256"),
    (json.dumps({"keys": [{"name": "a", "sha256": "a" * 64, "tenant": "../t"}]}), "keys.0.tenant"),
    (json.dumps({"keys": [{"name": "a", "sha256": "a" * 64, "tenant": "t", "extra": 1}]}), "keys.0.extra"),
    (json.dumps({"keys": [{"name": "a", "sha256": "a" * 64, "tenant": "t", "rate": "lots"}]}), "rate 'lots'"),
    (json.dumps({"keys": [{"name": "a", "sha256": "a" * 64, "tenant": "t"},
                          {"name": "a", "sha256": "b" * 64, "tenant": "u"}]}), "same name"),
])
def test_a_bad_key_file_is_refused_naming_the_variable_and_the_entry(tmp_path, content, complaint):
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_keys(path)
    assert str(info.value).startswith(f"RAGROUTE_API_KEYS={path}") and complaint in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(tmp_path / "missing.json")


@pytest.mark.parametrize("header", [None, "", "Bearer ", "Basic abc", "Bearer rr-wrong"])
def test_a_missing_or_wrong_key_is_a_401(keyfile, header):
    gate = Gate(load_keys(keyfile[0]))
    with pytest.raises(Denied) as info:
        gate.authenticate(header)
    assert info.value.status == 401


def test_the_tenant_comes_from_the_key_and_another_is_a_403(keyfile):
    path, keys = keyfile
    gate = Gate(load_keys(path))
    caller = gate.authenticate(f"Bearer {keys['acme']}")
    assert caller.entry.name == "acme-web"
    assert gate.tenant(caller, "default") == "acme" and gate.tenant(caller, "acme") == "acme"
    with pytest.raises(Denied) as info:
        gate.tenant(caller, "globex")
    assert info.value.status == 403 and info.value.field == "tenant"
    open_gate = Gate(None)
    assert open_gate.tenant(open_gate.authenticate(None), "anyone") == "anyone"


def test_over_the_rate_a_key_gets_429s_with_retry_after_and_other_keys_do_not(keyfile):
    path, keys = keyfile
    gate = Gate(load_keys(path))
    acme, globex = (gate.authenticate(f"Bearer {keys[k]}") for k in ("acme", "globex"))

    async def go():
        for _ in range(3):
            warnings, _ = await gate.admit(acme)
            assert warnings == []
        with pytest.raises(Denied) as info:
            await gate.admit(acme)
        for _ in range(10):  # no rate configured for this key
            await gate.admit(globex)
        return info.value

    refused = run(go())
    assert refused.status == 429 and "3 per 1 minute" in str(refused) and 1 <= refused.retry_after_s <= 60


def test_a_used_up_token_quota_is_a_429_until_its_window_ends(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "k", "t", tokens_per_day=100)
    gate = Gate(load_keys(path), reserve_tokens=80)
    caller = gate.authenticate(f"Bearer {key}")

    async def go():
        _, first = await gate.admit(caller)
        await gate.settle(caller, first, 60)  # the reservation (80) becomes what it cost
        _, second = await gate.admit(caller)  # 60 < 100: still admitted
        await gate.settle(caller, second, 60)  # the last admitted answer may go past the quota
        used = await gate.used(caller)
        with pytest.raises(Denied) as info:
            await gate.admit(caller)
        return used, info.value

    used, refused = run(go())
    assert used == 120
    assert refused.status == 429 and "quota" in str(refused) and refused.retry_after_s > 23 * 3600


def test_concurrent_requests_are_admitted_only_while_their_reservations_fit_the_quota(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "k", "t", tokens_per_day=1000)
    gate = Gate(load_keys(path), reserve_tokens=300)
    caller = gate.authenticate(f"Bearer {key}")

    async def one():
        try:
            _, reservation = await gate.admit(caller)
        except Denied as exc:
            return exc.status
        await asyncio.sleep(0.01)  # all 32 are in flight together
        await gate.settle(caller, reservation, 290)  # each costs less than its reservation
        return 200

    async def go():
        return await asyncio.gather(*(one() for _ in range(32))), await gate.used(caller)

    statuses, used = run(go())
    # 0, 300, 600, 900 reserved are under 1000: four admitted; without reservations all 32 were
    assert statuses.count(200) == 4 and statuses.count(429) == 28
    assert used == 4 * 290 and used - 1000 <= 290  # past the quota by at most the last admitted answer


def test_when_the_limits_store_fails_requests_are_let_through_and_counted(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "k", "t", rate="1/minute", tokens_per_day=10)
    errors = []
    gate = Gate(load_keys(path), redis_url="redis://127.0.0.1:1/0", on_error=errors.append)  # nothing listens
    caller = gate.authenticate(f"Bearer {key}")

    async def go():
        first, reservation = await gate.admit(caller)
        t0 = time.perf_counter()
        second, _ = await gate.admit(caller)  # over the rate, but it cannot be counted
        skipped_in = time.perf_counter() - t0
        await gate.settle(caller, reservation, 50)
        return first, second, skipped_in

    first, second, skipped_in = run(go())
    assert first and "not checked" in first[0] and second and "not checked" in second[0]
    assert skipped_in < 0.05  # Redis is known to be down: the second request does not wait for it
    assert errors == ["admit", "admit", "charge"]


def test_a_request_is_charged_once_whether_it_is_settled_abandoned_or_both(tmp_path):
    from types import SimpleNamespace

    from pipelines.api.access import FrontDoor

    path = tmp_path / "keys.json"
    key = add_key(path, "k", "t", tokens_per_day=10_000)
    gate = Gate(load_keys(path), reserve_tokens=500)
    metrics = SimpleNamespace(denied=lambda s: None, observe=lambda r: None, usage=lambda *a: None)
    front = FrontDoor(gate, metrics)
    caller = front.authenticate(f"Bearer {key}")
    resp = SimpleNamespace(warnings=[], cache=SimpleNamespace(hit=False, decision=None),
                           usage=SimpleNamespace(tokens_in=300, tokens_out=40))

    async def go():
        delivered = await front.admit(caller, "default")
        await front.settle(delivered, resp)
        await front.abandon(delivered)  # the client hung up after the done event: no second charge
        abandoned = await front.admit(caller, "default")
        abandoned.meter.finished = 123  # what its generations cost before the hang-up
        await front.abandon(abandoned)
        await front.abandon(abandoned)
        return await gate.used(caller)

    assert run(go()) == 340 + 123
