"""The DynamoGraphDeployment files under deploy/ must pass the upstream CRD schema and the checks we rely on.

Why this test exists: a DGD with a misspelt field is not rejected by Kubernetes. The API server prunes
unknown fields, so `replica: 2` silently becomes the default of 1 replica, and `imagee:` silently runs
the operator's default image. No cluster is needed here. Every `*.yaml`/`*.yml` under deploy/ is parsed,
and every `kind: DynamoGraphDeployment` document in them is validated against the upstream v1alpha1
`openAPIV3Schema` in tests/deploy/schemas/ (see its README.md for the source and commit).

The CRD schema is a Kubernetes structural schema, not plain JSON Schema, so it is adapted in memory:

* `x-kubernetes-int-or-string: true`: the node accepts an integer or a string, with any `type` dropped.
  Its `pattern` (e.g. the Quantity regex) still applies to strings only, as in Kubernetes.
* Unknown fields fail. Every object node with `properties`, no `additionalProperties` and no
  `x-kubernetes-preserve-unknown-fields: true` gets `additionalProperties: false`. Kubernetes would
  prune such fields. Objects with no `properties` (e.g. `metadata`, `podTemplate`) stay open.
* Other `x-kubernetes-*` keys (CEL `x-kubernetes-validations`, list/map types) and `format` are not
  checked. The operator's admission webhook is not run either.

The checks we rely on for each DGD (see `dgd_problems`):
* `apiVersion: nvidia.com/v1alpha1`;
* `metadata.name` is set;
* there is at least one service;
* every service has a `componentType`;
* exactly one service is the `frontend`;
* every `extraPodSpec.mainContainer.command` runs `python3 -m dynamo.<module>`, and that module has a
  `__main__` in this repository. A shell `command` (`sh -c`) is accepted when its script runs it.

Set DGD_SCHEMA_DEPLOY_DIR to run these checks on another directory, for example a scratch DGD.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY_DIR = Path(os.environ.get("DGD_SCHEMA_DEPLOY_DIR") or REPO / "deploy")
SCHEMA_PATH = Path(__file__).parent / "schemas" / "dynamographdeployment.v1alpha1.json"
DGD_KIND = "DynamoGraphDeployment"
DGD_API_VERSION = "nvidia.com/v1alpha1"
SHELLS = {"sh", "bash", "dash"}
# `python3 -m dynamo.x.y` anywhere in a shell script: at its start or after a separator.
PYTHON3_M_DYNAMO = re.compile(r"(?:^|[\s;&|(])python3\s+-m\s+(\S+)")
MODULE_NAME = re.compile(r"dynamo(?:\.[A-Za-z_]\w*)+")


# --- loading -------------------------------------------------------------------------------------

class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate mapping keys. PyYAML keeps the last duplicate silently,
    and kubectl's strict decoding rejects it, so a duplicate would hide a field from this test."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` may be overridden by the keys next to it
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_documents(path: Path) -> list[Any]:
    """Every YAML document in `path`, an empty one as None; raises yaml.YAMLError on bad YAML."""
    with path.open(encoding="utf-8") as f:
        return list(yaml.load_all(f, Loader=_UniqueKeyLoader))


def _in_helm_templates(path: Path) -> bool:
    """Files under a Helm chart's templates/ are Go templates. They are not YAML until rendered."""
    return any(parent.name == "templates" and (parent.parent / "Chart.yaml").is_file() for parent in path.parents)


def deploy_yaml_files(root: Path = DEPLOY_DIR) -> list[Path]:
    """Every *.yaml / *.yml under `root` (except Helm templates), sorted so test ids are stable."""
    files = [p for pattern in ("*.yaml", "*.yml") for p in root.rglob(pattern) if p.is_file()]
    return sorted(p for p in files if not _in_helm_templates(p))


def _display(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# --- the schema, made strict ---------------------------------------------------------------------

def _subschemas(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The schema nodes directly below `node`. This walks schema keywords only, never data, so
    `default`, `enum` and `x-kubernetes-validations` are not entered."""
    yield from (child for child in node.get("properties", {}).values() if isinstance(child, dict))
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            yield node[key]
    for key in ("anyOf", "allOf", "oneOf"):
        yield from (child for child in node.get(key, []) if isinstance(child, dict))


def strict_k8s_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Kubernetes structural schema in which unknown fields fail and int-or-string nodes
    accept integers and strings. See the module docstring for why."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if node.get("x-kubernetes-int-or-string") is True:
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if ("properties" in node and "additionalProperties" not in node
                and node.get("x-kubernetes-preserve-unknown-fields") is not True):
            node["additionalProperties"] = False
        stack.extend(_subschemas(node))
    return schema


@functools.cache
def dgd_validator() -> jsonschema.protocols.Validator:
    """The Draft 7 validator for the stored v1alpha1 DGD schema, made strict. It is built once."""
    schema = strict_k8s_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


# --- the checks ----------------------------------------------------------------------------------

def _dict(value: Any) -> dict[str, Any]:
    """`value` if it is a mapping, else {}: the schema reports wrong types, and the checks go on."""
    return value if isinstance(value, dict) else {}


def _module_exists(module: str) -> bool:
    """`python3 -m module` would run here: a package with __main__.py or a module file in this repo."""
    base = REPO.joinpath(*module.split("."))
    return (base / "__main__.py").is_file() or base.with_suffix(".py").is_file()


def _command_problems(where: str, command: Any, args: Any) -> list[str]:
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        return [f"{where}.command: expected a list of strings, got {command!r}"]
    argv = command + (args if isinstance(args, list) else [])
    argv = [a for a in argv if isinstance(a, str)]
    if argv and Path(argv[0]).name in SHELLS and "-c" in argv[1:]:
        i = argv.index("-c")
        script = argv[i + 1] if i + 1 < len(argv) else ""
        modules = [m.rstrip(";&|)") for m in PYTHON3_M_DYNAMO.findall(script)]
    elif argv[:2] and Path(argv[0]).name == "python3" and argv[1:2] == ["-m"]:
        modules = argv[2:3]
    else:
        modules = []
    if not modules:
        return [f"{where}.command: does not run `python3 -m dynamo.<module>`: {shlex.join(argv)!r}"]
    return [f"{where}.command: `python3 -m {m}`: no such runnable dynamo module in this repository"
            for m in modules if not MODULE_NAME.fullmatch(m) or not _module_exists(m)]


def dgd_problems(doc: dict[str, Any]) -> list[str]:
    """Every problem in one DGD document: its apiVersion, its schema errors (each with its JSON path),
    then the checks we rely on. An empty list means it is fine."""
    if doc.get("apiVersion") != DGD_API_VERSION:
        return [f"$.apiVersion: expected {DGD_API_VERSION!r}, got {doc.get('apiVersion')!r}"]
    problems = [f"{e.json_path}: {e.message}"
                for e in sorted(dgd_validator().iter_errors(doc), key=lambda e: (e.json_path, e.message))]
    name = _dict(doc.get("metadata")).get("name")
    if not isinstance(name, str) or not name:
        problems.append("$.metadata.name: missing")
    services = _dict(doc.get("spec")).get("services")
    if not isinstance(services, dict) or not services:
        problems.append("$.spec.services: no services")
        return problems
    frontends = []
    for svc_name, svc in services.items():
        where = f"$.spec.services.{svc_name}"
        if not isinstance(svc, dict):
            continue  # the schema has reported it
        component_type = svc.get("componentType")
        if not isinstance(component_type, str) or not component_type:
            problems.append(f"{where}.componentType: missing")
        elif component_type == "frontend":
            frontends.append(svc_name)
        main = _dict(_dict(svc.get("extraPodSpec")).get("mainContainer"))
        if "command" in main:
            problems += _command_problems(f"{where}.extraPodSpec.mainContainer", main["command"], main.get("args"))
    if len(frontends) != 1:
        problems.append(f"$.spec.services: expected exactly one service with componentType 'frontend', "
                        f"found {len(frontends)}: {frontends}")
    return problems


def file_problems(path: Path) -> tuple[list[str], int]:
    """All problems in one YAML file, each prefixed with the file (and document) they are in, and
    the number of DGD documents it holds."""
    shown = _display(path)
    try:
        docs = load_documents(path)
    except yaml.YAMLError as e:
        return [f"{shown}: YAML parse error: {e}"], 0
    problems, dgds = [], 0
    for number, doc in enumerate(docs, start=1):
        if not isinstance(doc, dict) or doc.get("kind") != DGD_KIND:
            continue
        dgds += 1
        name = _dict(doc.get("metadata")).get("name", "?")
        problems += [f"{shown} (document {number}, {DGD_KIND} {name}): {p}" for p in dgd_problems(doc)]
    return problems, dgds


# --- the tests -----------------------------------------------------------------------------------

NO_DEPLOY = f"{_display(DEPLOY_DIR)} does not exist yet; the DGD files will be checked once it does"
FILES = deploy_yaml_files() if DEPLOY_DIR.is_dir() else []


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=_display(p)) for p in FILES]
    or [pytest.param(None, id="no-deploy-files", marks=pytest.mark.skip(
        reason=NO_DEPLOY if not DEPLOY_DIR.is_dir() else f"no *.yaml/*.yml under {_display(DEPLOY_DIR)}"))])
def test_deploy_yaml_file(path: Path) -> None:
    """Each YAML file under deploy/ parses, and each DGD in it passes the schema and our checks."""
    problems, _ = file_problems(path)
    if problems:
        pytest.fail(f"{len(problems)} problem(s):\n" + "\n".join(problems), pytrace=False)


def test_deploy_has_dgds() -> None:
    """Once deploy/ exists, it holds DGDs. Otherwise the schema check above would pass vacuously."""
    if not DEPLOY_DIR.is_dir():
        pytest.skip(NO_DEPLOY)
    found = {_display(p): n for p in FILES if (n := file_problems(p)[1])}
    assert found, f"no {DGD_KIND} document in any *.yaml/*.yml under {_display(DEPLOY_DIR)}"


def minimal_dgd() -> dict[str, Any]:
    """A small valid DGD: a frontend and a mocker worker, with the kinds of fields the deploy files use."""
    image = "nvcr.io/example/dynamo-worker-runtime:0.1.0"
    return {
        "apiVersion": DGD_API_VERSION,
        "kind": DGD_KIND,
        "metadata": {"name": "mocker-agg"},
        "spec": {
            "envs": [{"name": "DYN_LOG", "value": "info"}],
            "services": {
                "Frontend": {
                    "componentType": "frontend",
                    "replicas": 1,
                    "livenessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10},
                    "extraPodSpec": {"mainContainer": {
                        "image": image,
                        "command": ["python3", "-m", "dynamo.frontend"],
                        "args": ["--http-port", "8000"],
                        "ports": [{"containerPort": 8000, "name": "http"}],
                    }},
                },
                "MockerWorker": {
                    "componentType": "worker",
                    "replicas": 2,
                    "resources": {"limits": {"cpu": "2", "memory": "4Gi", "gpu": "1"}},
                    "sharedMemory": {"size": "1Gi"},
                    "extraPodSpec": {"mainContainer": {
                        "image": image,
                        "command": ["/bin/sh", "-c"],
                        "args": ["exec python3 -m dynamo.mocker --model-path /models/tiny"],
                        "resources": {"limits": {"memory": "4Gi"}, "requests": {"cpu": 1}},
                    }},
                },
            },
        },
    }


@pytest.mark.parametrize("port", [8000, "http"])
def test_minimal_dgd_passes(port: int | str) -> None:
    """The validator accepts a valid DGD. An int-or-string field (a probe port) takes an int or a name."""
    dgd = minimal_dgd()
    dgd["spec"]["services"]["Frontend"]["livenessProbe"]["httpGet"]["port"] = port
    assert dgd_problems(dgd) == []


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        doc = doc[key]
    doc[leaf] = value


MISSPELT = [
    # (field to set, value, a fragment of the expected error)
    ("spec.services.Frontend.replica", 1, "$.spec.services.Frontend: Additional properties are not allowed ('replica'"),
    ("spec.services.MockerWorker.extraPodSpec.mainContainer.imagee", "x",
     "$.spec.services.MockerWorker.extraPodSpec.mainContainer: Additional properties are not allowed ('imagee'"),
    ("spec.service", {}, "$.spec: Additional properties are not allowed ('service'"),
    ("spec.services.MockerWorker.resources.limits.gpus", "1",
     "$.spec.services.MockerWorker.resources.limits: Additional properties are not allowed ('gpus'"),
    ("spec.services.Frontend.replicas", "one", "$.spec.services.Frontend.replicas: 'one' is not of type 'integer'"),
    ("spec.services.MockerWorker.sharedMemory.size", True, "$.spec.services.MockerWorker.sharedMemory.size: True is not"),
    ("spec.services.MockerWorker.sharedMemory.size", "1 GB",
     "$.spec.services.MockerWorker.sharedMemory.size: '1 GB' does not match"),
]


@pytest.mark.parametrize(("field", "value", "expected"), MISSPELT, ids=[m[0].rsplit(".", 1)[-1] + f"={m[1]!r}"
                                                                       for m in MISSPELT])
def test_schema_rejects_misspelt_or_mistyped_fields(field: str, value: Any, expected: str) -> None:
    """The validator bites: a misspelt field, which Kubernetes would prune silently, or a wrong type fails
    with its JSON path."""
    dgd = minimal_dgd()
    _set(dgd, field, value)
    problems = dgd_problems(dgd)
    assert any(expected in p for p in problems), problems


def _drop_component_type(dgd: dict[str, Any]) -> None:
    del dgd["spec"]["services"]["MockerWorker"]["componentType"]


OUR_CHECKS = [
    ("api-version", lambda d: d.update(apiVersion="nvidia.com/v1beta1"), "$.apiVersion: expected 'nvidia.com/v1alpha1'"),
    ("no-component-type", _drop_component_type, "$.spec.services.MockerWorker.componentType: missing"),
    ("two-frontends", lambda d: _set(d, "spec.services.MockerWorker.componentType", "frontend"),
     "found 2: ['Frontend', 'MockerWorker']"),
    ("no-frontend", lambda d: _set(d, "spec.services.Frontend.componentType", "main"), "found 0: []"),
    ("not-dynamo", lambda d: _set(d, "spec.services.Frontend.extraPodSpec.mainContainer.command",
                                  ["python3", "-m", "vllm.entrypoints.openai.api_server"]),
     "no such runnable dynamo module"),
    ("not-python3-m", lambda d: _set(d, "spec.services.Frontend.extraPodSpec.mainContainer.command",
                                     ["dynamo-frontend"]), "does not run `python3 -m dynamo.<module>`"),
    ("typo-module", lambda d: _set(d, "spec.services.MockerWorker.extraPodSpec.mainContainer.args",
                                   ["python3 -m dynamo.moker --model-path /m"]), "`python3 -m dynamo.moker`: no such"),
    ("no-name", lambda d: d.update(metadata={}), "$.metadata.name: missing"),
]


@pytest.mark.parametrize(("break_it", "expected"), [c[1:] for c in OUR_CHECKS], ids=[c[0] for c in OUR_CHECKS])
def test_our_checks_bite(break_it: Any, expected: str) -> None:
    """The checks beyond the schema fail on the mistakes they are there for."""
    dgd = minimal_dgd()
    break_it(dgd)
    problems = dgd_problems(dgd)
    assert any(expected in p for p in problems), problems


def test_file_problems_names_the_file(tmp_path: Path) -> None:
    """Bad YAML and duplicate keys fail naming the file. A multi-document file is checked document by
    document, and a non-DGD document in it is left alone."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: DynamoGraphDeployment\nspec: [unclosed\n")
    dup = tmp_path / "dup.yaml"
    dup.write_text("kind: DynamoGraphDeployment\nkind: DynamoGraphDeployment\n")
    multi = tmp_path / "multi.yml"
    broken = minimal_dgd()
    broken["spec"]["services"]["Frontend"]["replica"] = 1
    multi.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
                                         None, minimal_dgd(), broken]))
    (bad_problems, _), (dup_problems, _) = file_problems(bad), file_problems(dup)
    assert len(bad_problems) == 1 and bad_problems[0].startswith(f"{bad}: YAML parse error"), bad_problems
    assert len(dup_problems) == 1 and "found duplicate key 'kind'" in dup_problems[0], dup_problems
    problems, dgds = file_problems(multi)
    assert dgds == 2
    assert len(problems) == 1 and problems[0].startswith(f"{multi} (document 4, {DGD_KIND} mocker-agg): "
                                                          "$.spec.services.Frontend: Additional properties"), problems


def test_strict_schema_keeps_open_objects_open() -> None:
    """Only objects with declared properties are closed: preserve-unknown-fields and free-form maps
    (labels, plugin parameters) still take any key, as in Kubernetes."""
    schema = strict_k8s_schema({
        "type": "object",
        "properties": {
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "preserved": {"type": "object", "properties": {"a": {"type": "string"}},
                          "x-kubernetes-preserve-unknown-fields": True},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object"},
            "port": {"x-kubernetes-int-or-string": True, "type": "string", "pattern": "^[a-z0-9]+$"},
        },
    })
    v = jsonschema.Draft7Validator(schema)
    assert v.is_valid({"preserved": {"x": 1}, "labels": {"x": "y"}, "free": {"x": 1}, "port": 80})
    assert v.is_valid({"port": "http"})
    assert not v.is_valid({"closed": {"x": 1}})
    assert not v.is_valid({"port": "HTTP"})
    assert not v.is_valid({"port": [80]})
    assert not v.is_valid({"unknown": 1})
