"""A Kubernetes `DynamoGraphDeployment` (nvidia.com/v1alpha1) read as a local Graph.

Each service runs its main container's command (`python3 -m dynamo.<x> ARGS`, or the same under
`sh -c`) in `replicas` local processes with its envs; what only a cluster has (images, GPU limits,
secrets, probes, working directories) is left out and listed in the service's notes. Discovery is
the launcher's embedded file discovery, so the discovery settings of the file are dropped. The
Dynamo namespace follows the operator's rule, `<k8s namespace>-<graph name>`, unless the file
sets DYN_NAMESPACE.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from dynamo.serve.graph import Graph, GraphError, Service

DGD_KIND = "DynamoGraphDeployment"
DGD_GROUP = "nvidia.com/"
# Set by the launcher for a local run (file discovery, its namespace); a cluster's values would
# point at servers that are not here.
_LOCAL_SETTINGS = frozenset({"DYN_DISCOVERY_BACKEND", "ETCD_ENDPOINTS", "DYN_FILE_KV", "DYN_NAMESPACE"})
_PYTHONS = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")
_SHELLS = re.compile(r"^(?:\S*/)?(?:ba)?sh$")
_SHELL_SYNTAX = ("&&", "||", ";", "|", ">", "<", "&")
_K8S_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def graph_from_dgd(raw: dict[str, Any], path: str) -> Graph:
    api = str(raw.get("apiVersion", ""))
    if not api.startswith(DGD_GROUP):
        raise GraphError(f"{path}: a {DGD_KIND} has apiVersion nvidia.com/v1alpha1, got {api!r}")
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    services_spec = spec.get("services")
    if not isinstance(services_spec, dict) or not services_spec:
        raise GraphError(f"{path}: spec.services must be a non-empty mapping of services")
    common = _env_list(spec.get("envs"), f"{path}: spec.envs", notes=[])
    namespace = common.pop("DYN_NAMESPACE", None) or f"{meta.get('namespace') or 'default'}-{meta.get('name', 'graph')}"
    services = [_service(str(name), s, path) for name, s in services_spec.items()]
    frontends = [s for s in services if s.ready == "frontend"]
    for f in frontends:  # in a cluster all start at once; here workers first, so the frontend finds them
        f.after = [s.name for s in services if s not in frontends]
    return Graph(namespace=namespace, services=services,
                 env={k: v for k, v in common.items() if k not in _LOCAL_SETTINGS})


def _service(name: str, spec: Any, path: str) -> Service:
    where = f"{path}: service {name!r}"
    if not isinstance(spec, dict):
        raise GraphError(f"{where} must be a mapping")
    container = (spec.get("extraPodSpec") or {}).get("mainContainer") or {}
    notes: list[str] = []
    env = _env_list(spec.get("envs"), where, notes)
    env.update(_env_list(container.get("env"), f"{where} mainContainer.env", notes))
    module, args = _command(container.get("command") or [], container.get("args") or [], where)
    args = [_K8S_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in args]
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 1:
        raise GraphError(f"{where}: replicas must be an integer >= 1, got {replicas!r}")
    if (spec.get("multinode") or {}).get("nodeCount", 1) > 1:
        raise GraphError(f"{where} spans several nodes (multinode); a local run cannot")
    if container.get("image"):
        notes.append(f"image {container['image']} not used: runs from this checkout's Python")
    gpus = ((spec.get("resources") or {}).get("limits") or {}).get("gpu")
    if gpus:
        notes.append(f"GPU limit {gpus} not applied: the engine sees this machine's devices")
    if spec.get("envFromSecret"):
        notes.append(f"secret {spec['envFromSecret']} not read: export its variables (e.g. HF_TOKEN) yourself")
    if container.get("workingDir"):
        notes.append(f"workingDir {container['workingDir']} not used: paths are relative to the launcher's")
    dropped = sorted(k for k in env if k in _LOCAL_SETTINGS)
    if dropped:
        notes.append(f"{', '.join(dropped)} replaced by the local run's file discovery and namespace")
    ready = "frontend" if spec.get("componentType") == "frontend" or module == "dynamo.frontend" else "registered"
    return Service(name=name, module=module, args=args, replicas=replicas, ready=ready, notes=notes,
                   env={k: v for k, v in env.items() if k not in _LOCAL_SETTINGS})


def _command(command: list[Any], args: list[Any], where: str) -> tuple[str, list[str]]:
    """(module, its args) from a container's `command` + `args`: `python3 -m MODULE ...`, directly
    or as the one command of `sh -c`."""
    argv = [str(a) for a in [*command, *args]]
    if len(argv) >= 2 and _SHELLS.match(argv[0]) and argv[1] == "-c":
        script = argv[2:3]
        if not script or any(tok in _SHELL_SYNTAX for tok in shlex.split(script[0], posix=True)):
            raise GraphError(f"{where}: `sh -c` must run one `python3 -m MODULE ...` command to run locally")
        argv = shlex.split(script[0])
        if argv and argv[0] == "exec":
            argv = argv[1:]
    if len(argv) >= 3 and _PYTHONS.match(argv[0]) and argv[1] == "-m":
        return argv[2], argv[3:]
    if not argv:
        raise GraphError(f"{where}: extraPodSpec.mainContainer.command is missing; a local run needs it "
                         "(e.g. [python3, -m, dynamo.vllm]) since it cannot read an image's entrypoint")
    raise GraphError(f"{where}: runs {' '.join(argv[:3])!r}; a local run needs `python3 -m MODULE ARGS`")


def _env_list(items: Any, where: str, notes: list[str]) -> dict[str, str]:
    """A Kubernetes env list ([{name, value}]) as a dict; `valueFrom` entries are noted, not set."""
    env: dict[str, str] = {}
    for item in items or []:
        if not isinstance(item, dict) or "name" not in item:
            raise GraphError(f"{where}: each env entry needs a name, got {item!r}")
        if "value" in item:
            env[str(item["name"])] = str(item["value"])
        elif "valueFrom" in item:
            notes.append(f"{item['name']} (valueFrom) not set: it comes from the cluster")
    return env

