"""The config layer: one settings object per service, parsed once; the per-tier settings as a
table; no environment reads outside pipelines/config/."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from common.errors import ConfigError
from pipelines.config import TIER_SETTINGS, GenerationConfig, TierConfig
from pipelines.config import generation as generation_config
from pipelines.config.services import ProcessSettings, RagSettings

ROOT = Path(__file__).resolve().parents[2]


def test_every_tier_field_has_a_row_in_the_table():
    fields = {f.name for f in dataclasses.fields(TierConfig)} - {"name", "engine", "model"}
    assert set(TIER_SETTINGS) == fields


@pytest.mark.parametrize("setting", [k for k, rule in TIER_SETTINGS.items()
                                     if rule is not None and not isinstance(rule[0], str)])
def test_each_numeric_tier_setting_is_bounded_and_named(setting):
    var = f"RAGROUTE_LARGE_{setting.upper()}"
    lo, hi = TIER_SETTINGS[setting]
    with pytest.raises(ConfigError, match=var):
        GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu", var: str(hi * 2 + 1)})
    with pytest.raises(ConfigError, match=var):
        GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu", var: "many"})
    if setting not in ("max_tokens", "context_tokens"):  # those two are also checked against each other
        value = getattr(GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu", var: str(lo)}).tiers["large"], setting)
        assert value == lo


def test_word_settings_and_the_defaults_from_the_profile():
    cfg = GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_SMALL_DTYPE": "float16",
                                     "RAGROUTE_SMALL_ENFORCE_EAGER": "on", "RAGROUTE_GEN_TEMPERATURE": "0.3"})
    small, large = cfg.tiers["small"], cfg.tiers["large"]
    assert small.dtype == "float16" and small.enforce_eager is True and large.enforce_eager is False
    assert small.temperature == large.temperature == 0.3
    assert small.max_tokens == 96 and large.model == "qwen2.5-coder-1.5b-instruct"  # the cpu profile's
    with pytest.raises(ConfigError, match="RAGROUTE_SMALL_DTYPE='int3' is not one of auto, bfloat16"):
        GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_SMALL_DTYPE": "int3"})


def test_the_openai_key_falls_back_to_OPENAI_API_KEY_and_stays_out_of_logs():
    env = {"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_LARGE_ENGINE": "openai", "RAGROUTE_LARGE_MODEL": "gpt",
           "RAGROUTE_LARGE_BASE_URL": "http://h/v1", "OPENAI_API_KEY": "sk-secret"}
    tier = GenerationConfig.from_env(env).tiers["large"]
    assert tier.api_key == "sk-secret" and "sk-secret" not in repr(tier)
    assert GenerationConfig.from_env({**env, "RAGROUTE_LARGE_API_KEY": "sk-mine"}).tiers["large"].api_key == "sk-mine"
    assert GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "OPENAI_API_KEY": "x"}).tiers["small"].api_key == ""


def test_the_rag_service_parses_each_setting_once(monkeypatch):
    calls = []
    real = generation_config.GenerationConfig.from_env.__func__

    def counting(cls, env):
        calls.append("generation")
        return real(cls, env)

    monkeypatch.setattr(generation_config.GenerationConfig, "from_env", classmethod(counting))
    settings = RagSettings.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_DEFAULT_TIER": "large",
                                     "RAGROUTE_EMBED_MODEL": "all-MiniLM-L6-v2",
                                     "RAGROUTE_ADMIN_TOKEN": "t0k-3xAmple-s3cret"})
    assert calls == ["generation"]
    assert settings.rag.default_tier == "large" and settings.routing.embed_model == settings.retrieval.embed_model
    assert settings.admin_token == "t0k-3xAmple-s3cret" and "t0k-3xAmple-s3cret" not in repr(settings)
    with pytest.raises(ConfigError, match="RAGROUTE_DEFAULT_TIER='huge' is not one of small, large"):
        RagSettings.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_DEFAULT_TIER": "huge"})


def test_process_settings_name_a_bad_value():
    assert ProcessSettings.from_env({}) == ProcessSettings()
    assert ProcessSettings.from_env({"RAGROUTE_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="RAGROUTE_STAGE_ACCESS_LOG='yes'"):
        ProcessSettings.from_env({"RAGROUTE_STAGE_ACCESS_LOG": "yes"})


def _environment_reads(path: Path) -> list[str]:
    """``os.environ.get(...)``, ``os.environ[...]`` read, ``os.getenv(...)``: not a default
    argument (``env=os.environ`` hands the mapping to the config layer) nor a write."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            if node.func.attr == "getenv" and isinstance(target, ast.Name) and target.id == "os":
                found.append(f"{path}:{node.lineno}")
            elif node.func.attr == "get" and ast.unparse(target) == "os.environ":
                found.append(f"{path}:{node.lineno}")
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and ast.unparse(node.value) == "os.environ":
            found.append(f"{path}:{node.lineno}")
    return found


def test_no_environment_reads_outside_the_config_layer():
    reads = [hit for pkg in ("pipelines", "services", "index", "common") for path in sorted((ROOT / pkg).rglob("*.py"))
             if ROOT / "pipelines" / "config" not in path.parents for hit in _environment_reads(path)]
    assert not reads, "read the setting in pipelines/config/ and pass it on: " + ", ".join(reads)


def test_the_scan_finds_a_read(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\nA = os.environ.get('X')\nB = os.environ['Y']\nC = os.getenv('Z')\n"
                   "os.environ['W'] = '1'\ndef f(env=os.environ):\n    return env\n")
    assert _environment_reads(src) == [f"{src}:2", f"{src}:3", f"{src}:4"]


def test_the_cache_backend_can_be_named_redis_and_then_needs_a_url():
    from pipelines.config import CacheConfig

    assert CacheConfig.from_env({"RAGROUTE_CACHE": "redis", "REDIS_URL": "redis://h:6379/0"}).redis_url
    assert CacheConfig.from_env({"REDIS_URL": "redis://h:6379/0"}).redis_url  # memory + REDIS_URL: Redis, as before
    with pytest.raises(ConfigError, match="RAGROUTE_CACHE=redis needs REDIS_URL"):
        CacheConfig.from_env({"RAGROUTE_CACHE": "redis"})


@pytest.mark.parametrize("token", ["t0k", "change-me", "a" * 40, "abababababababab"])
def test_a_weak_admin_token_stops_the_start_naming_the_variable(token):
    with pytest.raises(ConfigError, match="RAGROUTE_ADMIN_TOKEN is too weak"):
        RagSettings.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_ADMIN_TOKEN": token})
    assert RagSettings.from_env({"RAGROUTE_GEN_PROFILE": "cpu"}).admin_token == ""  # unset: the admin APIs are off


def test_require_keys_refuses_an_open_start_and_body_limits_are_settings():
    with pytest.raises(ConfigError, match="RAGROUTE_REQUIRE_KEYS=1 but RAGROUTE_API_KEYS is not set"):
        RagSettings.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_REQUIRE_KEYS": "1"})
    rag = RagSettings.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_MAX_BODY_BYTES": "65536"}).rag
    assert rag.max_body_bytes == 65536 and rag.ingest_max_body_bytes == 32 << 20
    with pytest.raises(ConfigError, match="RAGROUTE_MAX_BODY_BYTES='10' must be between"):
        RagSettings.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_MAX_BODY_BYTES": "10"})
