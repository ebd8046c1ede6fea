"""The generation fingerprint keys cached answers: it changes with anything that shapes an
answer (a tier's model or sampling, the router or its artifact, the cascade settings) and with
nothing else."""

from __future__ import annotations

from dataclasses import replace

from pipelines.config import CascadeConfig, GenerationConfig, RagConfig, RoutingConfig
from pipelines.query.fingerprint import generation_fingerprint

ENV = {"RAGROUTE_GEN_PROFILE": "cpu"}


def fp(env=None, rag=None, routing=None) -> str:
    return generation_fingerprint(rag or RagConfig(), GenerationConfig.from_env({**ENV, **(env or {})}),
                                  routing or RoutingConfig.from_env({}))


def test_the_same_settings_give_the_same_fingerprint():
    assert fp() == fp() and fp({"RAGROUTE_LARGE_PRICE_IN": "9"}) == fp()  # prices do not shape answers


def test_a_tier_model_or_its_sampling_changes_it():
    base = fp()
    assert fp({"RAGROUTE_LARGE_MODEL": "smollm2-135m-instruct"}) != base
    assert fp({"RAGROUTE_SMALL_MAX_TOKENS": "64"}) != base
    assert fp({"RAGROUTE_GEN_TEMPERATURE": "0.7"}) != base


def test_the_router_its_artifact_and_the_cascade_change_it(tmp_path):
    base = fp()
    assert fp(routing=RoutingConfig(router="learned")) != base
    assert fp(routing=RoutingConfig(threshold=0.7)) != base
    # the tier profile's default threshold too: answers routed at 0.5 are not served at 0
    assert fp(routing=RoutingConfig.from_env({"RAGROUTE_GEN_PROFILE": "gpu"})) != \
        fp(routing=RoutingConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu"}))
    (tmp_path / "router.json").write_text('{"weights": [1]}')
    one = fp(routing=RoutingConfig(router="learned", artifact=tmp_path))
    (tmp_path / "router.json").write_text('{"weights": [2]}')  # retrained: same folder, other router
    assert fp(routing=RoutingConfig(router="learned", artifact=tmp_path)) != one
    assert fp(rag=replace(RagConfig(), cascade=CascadeConfig("grounded", 0.9, "test"))) != base
