"""The two files `python -m dynamo.serve` reads into one Graph (dynamo.serve.graph):

- a Kubernetes `DynamoGraphDeployment` (deploy/<backend>/*.yaml; dynamo.serve.dgd), so that any
  deploy file can be tried on one machine;
- our own local graph YAML (examples/*.yaml), which can pin replicas to cores and name readiness:

    namespace: dynamo                 # passed to every service as --namespace
    env: {HF_HUB_OFFLINE: "1"}        # for every service
    services:
      worker:
        module: dynamo.vllm           # python -m MODULE
        replicas: 2
        args: [--model, "${MODEL}"]   # ${VAR} and ${VAR:-default} expand from the environment
        env: {A: "1"}
        replica_env: [{VLLM_CPU_OMP_THREADS_BIND: "0"}, {VLLM_CPU_OMP_THREADS_BIND: "1"}]
        ready: registered             # registered (in discovery) | http:/health:PORT | none
      frontend:
        module: dynamo.frontend
        args: [--http-port, "8000"]
        ready: "http://127.0.0.1:8000/health"
        after: [worker]               # start once these are ready
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from dynamo.serve.dgd import DGD_KIND, graph_from_dgd
from dynamo.serve.graph import Graph, GraphError, Service, expand


def load_graph(path: str | Path, env: dict[str, str] | None = None) -> Graph:
    env = dict(os.environ if env is None else env)
    try:
        raw: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise GraphError(f"cannot read graph {path}: {e}") from None
    if isinstance(raw, dict) and raw.get("kind") == DGD_KIND:
        graph = graph_from_dgd(raw, str(path))
    else:
        graph = _graph_from_local_yaml(raw, str(path), env)
    graph.ordered()  # validates `after`
    return graph


def _graph_from_local_yaml(raw: Any, path: str, env: dict[str, str]) -> Graph:
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict) or not raw["services"]:
        raise GraphError(f"{path}: expected a mapping with a non-empty 'services' mapping "
                         f"(or a {DGD_KIND})")
    namespace = expand(str(raw.get("namespace", "${DYN_NAMESPACE:-dynamo}")), env)
    common_env = {str(k): expand(str(v), env) for k, v in (raw.get("env") or {}).items()}
    services = []
    for name, spec in raw["services"].items():
        if not isinstance(spec, dict) or "module" not in spec:
            raise GraphError(f"{path}: service {name!r} needs a 'module' (e.g. dynamo.vllm)")
        replicas = int(spec.get("replicas", 1))
        if replicas < 1:
            raise GraphError(f"{path}: service {name!r}: replicas must be >= 1")
        services.append(Service(
            name=str(name), module=str(spec["module"]),
            args=[expand(str(a), env) for a in spec.get("args") or []],
            replicas=replicas,
            env={str(k): expand(str(v), env) for k, v in (spec.get("env") or {}).items()},
            replica_env=[{str(k): expand(str(v), env) for k, v in (e or {}).items()}
                         for e in spec.get("replica_env") or []],
            ready=expand(str(spec.get("ready", "registered")), env),
            after=[str(a) for a in spec.get("after") or []],
        ))
    return Graph(namespace=namespace, services=services, env=common_env)
