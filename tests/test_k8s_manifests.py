"""deploy/k8s: every manifest valid against the Kubernetes schemas (offline, kubernetes-validate ships
them), the GPU overlay rendered and valid, and the manifests consistent with the server they run: the
container's arguments parse with the real CLI, its ports and probe paths are the server's, the grace
period outlasts the drain, and the HPA's metric is one the server exports (slow: a real server)."""
from __future__ import annotations

import copy
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from parakeet_streaming.cli import build_parser
from parakeet_streaming.server.app import DRAIN_SECONDS as FINALS_SECONDS

kv = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed (pip install kubernetes-validate; it is in the test extra)")

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
# The oldest release still in wide use whose API has everything used here, and the newest schemas shipped.
VERSIONS = ("1.29.0", kv.latest_version())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The subset of `kubectl kustomize` these manifests use: resources (files or folders) and
    RFC 6902 JSON patches selected by kind and name."""
    spec = load_all(folder / "kustomization.yaml")[0]
    assert set(spec) <= {"apiVersion", "kind", "resources", "patches"}, "kustomize feature not rendered here"
    docs: list[dict[str, Any]] = []
    for entry in spec["resources"]:
        target = folder / entry
        docs += kustomize(target) if target.is_dir() else load_all(target)
    for patch in spec.get("patches", []):
        target = patch["target"]
        hits = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert len(hits) == 1, patch
        for op in load_all(folder / patch["path"])[0]:
            json_patch(hits[0], op)
    return docs


def json_patch(doc: dict[str, Any], op: dict[str, Any]) -> None:
    *parents, last = op["path"].lstrip("/").split("/")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        if op["op"] == "add" and last == "-":
            node.append(op["value"])
            return
        index = int(last)
        assert index < len(node), op
        if op["op"] == "replace":
            node[index] = op["value"]
        else:
            node.insert(index, op["value"])
        return
    assert op["op"] == "add" or last in node, f"replace of a missing field: {op}"
    node[last] = copy.deepcopy(op["value"])


CPU = kustomize(K8S)
GPU = kustomize(K8S / "gpu")


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def serve_args(docs: list[dict[str, Any]]):
    c = container(docs)
    assert c["command"] == ["parakeet-server"] and c["args"][0] == "serve"
    return build_parser().parse_args(c["args"])  # exits (SystemExit) on a flag the CLI does not know


def test_every_manifest_file_is_rendered():
    listed = {Path(r).name for r in load_all(K8S / "kustomization.yaml")[0]["resources"]}
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_valid_against_kubernetes_schemas(variant: str, version: str):
    for doc in CPU if variant == "cpu" else GPU:
        kv.validate(doc, version, strict=True)  # raises ValidationError naming the bad field


def test_schema_check_catches_a_bad_field():
    bad = copy.deepcopy(by_kind(CPU, "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8080]
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[-1], strict=True)
    typo = copy.deepcopy(by_kind(CPU, "Service"))
    typo["spec"]["portz"] = typo["spec"].pop("ports")
    with pytest.raises(kv.ValidationError):
        kv.validate(typo, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_ports_probes_and_drain_match_the_server(variant: str):
    docs = CPU if variant == "cpu" else GPU
    args = serve_args(docs)
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"ws": args.ws_port, "tcp": args.port, "status": args.status_port, "http": args.http_port}
    service = by_kind(docs, "Service")["spec"]
    assert {p["name"]: p["targetPort"] for p in service["ports"]} == {name: name for name in ports}
    assert service["selector"].items() <= by_kind(docs, "Deployment")["spec"]["template"]["metadata"][
        "labels"].items()
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model loading can take minutes"
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The kubelet counts the preStop hook inside the grace period; after --drain-seconds the server
    # still delivers the finals of the streams it cut (bounded by FINALS_SECONDS).
    assert grace > float(pre_stop[1]) + args.drain_seconds + FINALS_SECONDS


def test_gpu_variant():
    args = serve_args(GPU)
    assert args.device == "cuda"
    resources = container(GPU)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert container(GPU)["image"].endswith("-cuda") and container(CPU)["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in container(CPU)["resources"].get("limits", {})


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_autoscaler_and_disruption_budget(variant: str):
    docs = CPU if variant == "cpu" else GPU
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["spec"]
    deployment = by_kind(docs, "Deployment")
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    (metric,) = hpa["metrics"]
    target = float(metric["pods"]["target"]["averageValue"])
    assert 0 < target < serve_args(docs).max_num_streams, "the target must leave free slots per pod"
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    pdb = by_kind(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["maxUnavailable"] == 1


def test_adapter_rule_serves_the_metric_the_hpa_asks_for():
    (rule,) = load_all(K8S / "prometheus-adapter" / "values.yaml")[0]["rules"]["custom"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    for docs in (CPU, GPU):
        (metric,) = by_kind(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
        assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def wait_ok(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status == 200
        except urllib.error.HTTPError:  # 503 while loading
            time.sleep(0.5)
    return False


@pytest.mark.slow
def test_the_deployments_command_serves_the_probes_and_the_metric(tmp_path: Path):
    """The Deployment's own arguments (model swapped for dummy weights, ports for free ones) start a real
    server whose probe paths answer and whose /metrics has the series the adapter rule selects."""
    from server_helpers import start_server_process, stop_server_process

    args = [a for a in container(CPU)["args"][1:] if not a.startswith(("--host", "--log-level"))]
    (rule,) = load_all(K8S / "prometheus-adapter" / "values.yaml")[0]["rules"]["custom"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    proc, ports = start_server_process([*args, "--load-format", "dummy"], log=tmp_path / "server.log")
    try:
        base = f"http://127.0.0.1:{ports['http']}"
        with urllib.request.urlopen(base + container(CPU)["livenessProbe"]["httpGet"]["path"], timeout=10) as r:
            assert r.status == 200
        assert wait_ok(base + container(CPU)["readinessProbe"]["httpGet"]["path"], 120), "never ready"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        assert re.search(rf"^{series} 0(\.0)?$", text, re.M), text
        max_streams = re.search(r"^parakeet_max_streams (\S+)$", text, re.M).group(1)
        assert float(max_streams) == serve_args(CPU).max_num_streams
    finally:
        stop_server_process(proc)
    assert proc.returncode == 0
