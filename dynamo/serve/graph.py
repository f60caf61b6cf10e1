"""A graph of local services (frontend, workers with replicas) read from YAML.

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class GraphError(ValueError):
    pass


def expand(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise GraphError(f"${{{name}}} is not set: export {name}=... or give a default as ${{{name}:-value}}")
    return _VAR.sub(sub, text)


@dataclass
class Service:
    name: str
    module: str
    args: list[str] = field(default_factory=list)
    replicas: int = 1
    env: dict[str, str] = field(default_factory=dict)
    replica_env: list[dict[str, str]] = field(default_factory=list)
    ready: str = "registered"
    after: list[str] = field(default_factory=list)

    def command(self, python: str) -> list[str]:
        return [python, "-m", self.module, *self.args]


@dataclass
class Graph:
    namespace: str
    services: list[Service]
    env: dict[str, str] = field(default_factory=dict)

    def ordered(self) -> list[Service]:
        """Services in start order (each after the ones it names in `after`)."""
        done: list[Service] = []
        names = {s.name for s in self.services}
        pending = list(self.services)
        while pending:
            progressed = False
            for s in list(pending):
                unknown = set(s.after) - names
                if unknown:
                    raise GraphError(f"service {s.name!r} starts after unknown service(s) {sorted(unknown)}")
                if all(a in {d.name for d in done} for a in s.after):
                    done.append(s)
                    pending.remove(s)
                    progressed = True
            if not progressed:
                raise GraphError(f"services {[s.name for s in pending]} wait on each other in a cycle")
        return done


def load_graph(path: str | Path, env: dict[str, str] | None = None) -> Graph:
    env = dict(os.environ if env is None else env)
    try:
        raw: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise GraphError(f"cannot read graph {path}: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict) or not raw["services"]:
        raise GraphError(f"{path}: expected a mapping with a non-empty 'services' mapping")
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
    graph = Graph(namespace=namespace, services=services, env=common_env)
    graph.ordered()  # validates `after`
    return graph
