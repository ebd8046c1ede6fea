"""The probe paths and the autoscaling metric the deployment files use (deploy/k8s/*.yaml) exist
on a real `bentoml serve` of this bento (the suite's shared server)."""

from __future__ import annotations

import httpx
import yaml

from tests.unit.test_deploy import DEPLOY, containers, k8s_docs


def test_every_probe_path_in_the_manifests_answers_200(server):
    paths = {c[probe]["httpGet"]["path"] for owner, c in containers(k8s_docs()) if owner.startswith("ragroute")
             for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"/readyz", "/livez"}
    for path in sorted(paths):
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200, path


def test_the_generation_autoscaling_metric_is_exported(server):
    hpa = yaml.safe_load_all((DEPLOY / "k8s" / "ragroute.yaml").read_text())
    metric = next(d for d in hpa if d and d["kind"] == "HorizontalPodAutoscaler"
                  and d["metadata"]["name"] == "ragroute-generation")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    exposition = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert f"# TYPE {metric} gauge" in exposition, metric
