"""Parsing of `python -m dynamo.serve` graphs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dynamo.serve.graph import GraphError, expand
from dynamo.serve.readers import load_graph

REPO = Path(__file__).resolve().parents[2]


def test_expand_variables_and_defaults() -> None:
    assert expand("${A}-${B:-two}", {"A": "one"}) == "one-two"
    assert expand("${B:-}", {}) == ""
    with pytest.raises(GraphError, match=r"\$\{MODEL\} is not set"):
        expand("--model ${MODEL}", {})


@pytest.mark.parametrize("name", ["agg.yaml", "agg_router.yaml", "disagg.yaml", "mocker.yaml"])
def test_examples_load(name: str) -> None:
    graph = load_graph(REPO / "examples" / name, {"MODEL": "/models/x"})
    ordered = [s.name for s in graph.ordered()]
    assert ordered[-1] == "frontend"
    assert all("/models/x" in s.args for s in graph.services if s.module != "dynamo.frontend")


def test_disagg_pins_engines_to_different_cores() -> None:
    graph = load_graph(REPO / "examples" / "disagg.yaml", {"MODEL": "m"})
    binds = {s.name: s.env.get("VLLM_CPU_OMP_THREADS_BIND") for s in graph.services}
    assert binds["prefill"] != binds["decode"]


@pytest.mark.parametrize("text, message", [
    ("services: {}", "non-empty 'services'"),
    ("services: {w: {args: []}}", "needs a 'module'"),
    ("services: {w: {module: m, replicas: 0}}", "replicas must be >= 1"),
    ("services: {w: {module: m, after: [x]}}", "unknown service"),
    ("services: {a: {module: m, after: [b]}, b: {module: m, after: [a]}}", "cycle"),
    ("services: [unclosed", "cannot read graph"),
])
def test_bad_graphs_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "g.yaml"
    p.write_text(text)
    with pytest.raises(GraphError, match=message):
        load_graph(p, {})


# --- DynamoGraphDeployment files (deploy/) -------------------------------------------------------

DGD = """
apiVersion: nvidia.com/v1alpha1
kind: DynamoGraphDeployment
metadata: {name: g, namespace: team}
spec:
  envs: [{name: DYN_DISCOVERY_BACKEND, value: etcd}, {name: HF_HUB_OFFLINE, value: "1"}]
  services:
    Frontend:
      componentType: frontend
      extraPodSpec: {mainContainer: {image: fe:1, command: [python3, -m, dynamo.frontend], args: [--http-port, "8123"]}}
    Worker:
      componentType: worker
      replicas: 2
      envs: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}, {name: HOST, value: h}]
      resources: {limits: {gpu: "1"}}
      extraPodSpec:
        mainContainer: {command: [/bin/sh, -c], args: ["exec python3 -m dynamo.mocker --model m --advertise-host $(HOST)"]}
"""


def _dgd(tmp_path: Path, text: str = DGD) -> Path:
    p = tmp_path / "dgd.yaml"
    p.write_text(text)
    return p


def test_dgd_reads_as_a_local_graph(tmp_path: Path) -> None:
    graph = load_graph(_dgd(tmp_path), {})
    assert graph.namespace == "team-g"  # the operator's rule: <k8s namespace>-<graph name>
    assert graph.env == {"HF_HUB_OFFLINE": "1"}  # discovery is the local run's own
    frontend, worker = graph.services
    assert [s.name for s in graph.ordered()] == ["Worker", "Frontend"] and frontend.after == ["Worker"]
    assert frontend.ready_url() == "http://127.0.0.1:8123/health"
    assert worker.module == "dynamo.mocker" and worker.replicas == 2 and worker.ready == "registered"
    assert worker.args == ["--model", "m", "--advertise-host", "h"]  # sh -c unwrapped, $(HOST) expanded
    notes = " ".join(worker.notes)
    assert "POD_IP (valueFrom) not set" in notes and "GPU limit 1 not applied" in notes
    assert any("image fe:1 not used" in n for n in frontend.notes)


def test_every_deploy_file_reads(tmp_path: Path) -> None:
    files = sorted((REPO / "deploy").glob("*/*.yaml"))
    assert len(files) >= 12
    for path in files:
        graph = load_graph(path, {})
        assert graph.ordered()[-1].name == "Frontend", path
        assert graph.namespace == f"default-{path.parent.name}-{path.stem.replace('_', '-')}"


@pytest.mark.parametrize("change, message", [
    (("{command: [/bin/sh, -c], args: [\"exec python3 -m dynamo.mocker --model m --advertise-host $(HOST)\"]}",
      "{image: w:1}"), "command is missing"),
    (("exec python3 -m dynamo.mocker", "cd /x && python3 -m dynamo.mocker"), "one `python3 -m MODULE"),
    (("[/bin/sh, -c], args: [\"exec ", "[./run.sh], args: [\""), "needs `python3 -m MODULE ARGS`"),
    (("replicas: 2", "replicas: 0"), "replicas must be an integer >= 1"),
    (("replicas: 2", "replicas: 2\n      multinode: {nodeCount: 2}"), "several nodes"),
    (("apiVersion: nvidia.com/v1alpha1", "apiVersion: v1"), "apiVersion nvidia.com"),
])
def test_bad_dgd_says_what_is_wrong(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = DGD.replace(*change)
    assert text != DGD
    with pytest.raises(GraphError, match=re.escape(message)):
        load_graph(_dgd(tmp_path, text), {})


def test_overrides_for_a_local_run(tmp_path: Path) -> None:
    graph = load_graph(_dgd(tmp_path), {})
    graph.set_module("Work*=dynamo.vllm")
    graph.set_arg("model=/models/tiny")  # every service that has it
    graph.set_arg("Frontend:http-port=9000")
    graph.set_arg("Frontend:--router-mode=kv")  # named and missing: added
    frontend, worker = graph.services
    assert worker.module == "dynamo.vllm" and worker.flag_value("--model") == "/models/tiny"
    assert frontend.ready_url() == "http://127.0.0.1:9000/health"
    assert frontend.args[-2:] == ["--router-mode", "kv"]
    with pytest.raises(GraphError, match="no service has --nope"):
        graph.set_arg("nope=1")
    with pytest.raises(GraphError, match="no service matches"):
        graph.set_module("Other=dynamo.mocker")
    with pytest.raises(GraphError, match="expected"):
        graph.set_arg("model")
