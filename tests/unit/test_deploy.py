"""The deployment files under deploy/ name what exists: services of the bento, valid BentoML
service configuration, settings ragroute reads, probe paths a ragroute server answers (the last
checked against a real server in tests/e2e/test_deploy_probes.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipelines.api.access import load_keys

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROBE_PATHS = {"/readyz", "/livez"}  # BentoML's own health endpoints (every ragroute server has them)


def bento_services() -> dict:
    from services.rag import RAG

    return RAG.all_services()


def documented_settings() -> list[re.Pattern]:
    """Each setting in the configuration table (docs/configuration.md), as a pattern (``<TIER>`` = any tier)."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    table = page[page.index("## Configuration"):]
    patterns = []
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        first = row.split("|")[1]
        names = re.findall(r"`([A-Z_<>]+)`", first)
        stem = names[0].rsplit("_", 1)[0] if names else ""
        for name in names:
            full = stem + name if name.startswith("_") else name  # "`X_TEMPERATURE`, `_TOP_P`"
            patterns.append(re.compile("^" + re.escape(full).replace("<TIER>", "[A-Z][A-Z0-9_]*") + "$"))
    return patterns


def known(name: str, patterns: list[re.Pattern]) -> bool:
    return any(p.match(name) for p in patterns) or name in {"REDIS_URL"}


def k8s_docs() -> list[dict]:
    return [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def containers(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], c) for d in docs if d["kind"] in ("Deployment", "StatefulSet")
            for c in d["spec"]["template"]["spec"]["containers"]]


def test_the_bentocloud_file_names_the_bento_s_services_with_valid_configuration():
    from bentoml._internal.configuration.v2 import _SERVICE_CONFIG
    from schema import Schema

    config = yaml.safe_load((DEPLOY / "bentocloud.yaml").read_text())
    services = bento_services()
    assert set(config["services"]) == set(services)  # all six, and nothing that is not in the bento
    for name, spec in config["services"].items():
        assert 1 <= spec["scaling"]["min_replicas"] <= spec["scaling"]["max_replicas"], name
        assert re.match(r"^(cpu|gpu)\.", spec["instance_type"]), name
        overrides = spec.get("config_overrides", {})
        merged = {**overrides, "traffic": {**services[name].config.get("traffic", {}), **overrides.get("traffic", {})}}
        Schema(_SERVICE_CONFIG).validate(merged)  # raises naming the bad key
    generation = config["services"]["ragroute-generation"]
    assert generation["instance_type"].startswith("gpu.")
    assert generation["config_overrides"]["traffic"]["external_queue"] is True
    assert config["services"]["ragroute"]["scaling"]["min_replicas"] >= 2  # survives losing one replica


def test_every_setting_in_the_deployment_files_is_one_ragroute_reads():
    patterns = documented_settings()
    assert len(patterns) > 40  # the table was found
    config = yaml.safe_load((DEPLOY / "bentocloud.yaml").read_text())
    names = [e["name"] for e in config["envs"]]
    names += [e["name"] for s in config["services"].values() for e in s.get("envs", [])]
    docs = k8s_docs()
    names += [k for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ragroute-config"
              for k in d["data"]]
    names += [k for d in docs if d["kind"] == "Secret" for k in d["stringData"] if k != "keys.json"]
    names += [e["name"] for owner, c in containers(docs) if owner.startswith("ragroute") for e in c.get("env", [])]
    unknown = [n for n in names if not known(n, patterns)]
    assert names and not unknown, f"not ragroute settings (docs/configuration.md): {unknown}"
    assert not known("RAGROUTE_NO_SUCH_SETTING", patterns)


def test_the_kubernetes_manifests_wire_the_image_probes_gpus_and_secrets():
    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "ragroute"), ("Deployment", "ragroute-generation"), ("Service", "ragroute"),
            ("Service", "ragroute-generation"), ("Deployment", "redis"), ("StatefulSet", "milvus"),
            ("Secret", "ragroute-secrets"), ("ConfigMap", "ragroute-config")} <= kinds
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    by_owner = dict(containers(docs))
    for owner in ("ragroute", "ragroute-generation"):
        c = by_owner[owner]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] in PROBE_PATHS and get["port"] in ports, (owner, probe)
        assert services[owner]["spec"]["selector"] == {"app": owner}
    assert by_owner["ragroute-generation"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in by_owner["ragroute"]["resources"].get("limits", {})
    # the generation pods run the Generation service of this bento; the entry pods call it by its Service
    target = by_owner["ragroute-generation"]["args"][2]
    module, cls = target.split(":")
    assert module == "services.generation" and bento_services()["ragroute-generation"].inner.__name__ == cls
    env = {e["name"]: e["value"] for e in by_owner["ragroute"]["env"]}
    assert env["RAGROUTE_GENERATION_URL"] == "http://ragroute-generation:3000"
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ragroute-config")["data"]
    assert config["RAGROUTE_MILVUS_URI"] == f"http://milvus:{services['milvus']['spec']['ports'][0]['port']}"
    secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
    assert secret["REDIS_URL"].startswith(f"redis://redis:{services['redis']['spec']['ports'][0]['port']}/")


def test_the_example_key_file_in_the_secret_loads(tmp_path):
    secret = next(d for d in k8s_docs() if d["kind"] == "Secret")["stringData"]
    (tmp_path / "keys.json").write_text(secret["keys.json"])
    assert load_keys(tmp_path / "keys.json") == []
    assert json.loads(secret["keys.json"]) == {"keys": []}


@pytest.mark.parametrize("name", ["bentocloud.yaml", "k8s/ragroute.yaml"])
def test_deployment_files_say_how_to_apply_them(name):
    head = (DEPLOY / name).read_text().split("\n", 12)
    assert any("bentoml deploy -f deploy/bentocloud.yaml" in line or "kubectl apply -f deploy/k8s/" in line
               for line in head)
