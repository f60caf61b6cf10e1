"""Every command line of the DynamoGraphDeployment files in deploy/ parses with the real module's
argument parser, with the envs the file gives it: a typo'd flag, a bad choice or contradicting
role flags fail here, not in a pod; what the commands point at (engine_configs/ files) exists in
the image's tree. The files are read by the reader `python -m dynamo.serve` uses. (The plain
manifests' commands: test_deploy_k8s.py.) SGLang's commands parse in the sglang tier (SGLang's
own parser lives in .venv-sglang).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from dynamo.frontend.args import parse_args as parse_frontend_args
from dynamo.llm.model_card import Role
from dynamo.llm.worker.args import WorkerConfig, add_worker_args
from dynamo.serve.readers import load_graph
from tests.support.backends import REPO

DEPLOY = REPO / "deploy"
ENGINES = {"dynamo.vllm": "dynamo.vllm.engine:VllmEngine", "dynamo.sglang": "dynamo.sglang.engine:SGLangEngine",
           "dynamo.trtllm": "dynamo.trtllm.engine:TrtllmEngine", "dynamo.mocker": "dynamo.mocker.engine:MockerEngine"}
NEEDS = {"dynamo.vllm": ("vllm", pytest.mark.vllm), "dynamo.sglang": ("sglang", pytest.mark.sglang)}


@dataclass
class Command:
    where: str
    module: str
    args: list[str]
    env: dict[str, str]
    role: str | None  # what the manifest says the service is: prefill / decode / None (aggregated or frontend)


def _env(items: Any) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in items or [] if "value" in e}


def _dgd_commands() -> Iterator[Command]:
    for path in sorted(DEPLOY.glob("*/*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if not isinstance(raw, dict) or raw.get("kind") != "DynamoGraphDeployment":
            continue
        graph = load_graph(path, {})
        for service in graph.services:
            spec = raw["spec"]["services"][service.name]
            env = {**_env(raw["spec"].get("envs")), **_env(spec.get("envs"))}
            yield Command(f"{path.relative_to(REPO)}:{service.name}", service.module, service.args, env,
                          spec.get("subComponentType"))


def _params() -> list[Any]:
    commands = list(_dgd_commands())
    out = []
    for c in commands:
        need = NEEDS.get(c.module)
        out.append(pytest.param(c, id=c.where, marks=[need[1]] if need else []))
    return out


COMMANDS = _params() if DEPLOY.exists() else []


def test_deploy_has_commands() -> None:
    modules = {p.values[0].module for p in COMMANDS}  # type: ignore[attr-defined]
    assert {"dynamo.frontend", "dynamo.vllm", "dynamo.sglang", "dynamo.trtllm", "dynamo.mocker"} <= modules


def _parse(parser: argparse.ArgumentParser, args: list[str], where: str) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        raise AssertionError(f"{where}: {err.getvalue().strip()}") from None


@pytest.mark.parametrize("command", COMMANDS)
def test_command_parses(command: Command, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    need = NEEDS.get(command.module)
    if need and importlib.util.find_spec(need[0]) is None:
        pytest.skip(f"{need[0]} is not installed here")
    if command.module == "dynamo.frontend":
        config = parse_frontend_args(command.args, env=command.env)
        assert config.router_mode == command.env.get("DYN_ROUTER_MODE", config.router_mode)
        return
    module, _, cls_name = ENGINES[command.module].partition(":")
    engine = getattr(importlib.import_module(module), cls_name)
    parser = engine.make_parser(f"python -m {command.module}")
    engine.add_cli_args(parser)
    add_worker_args(parser, env=command.env)
    ns = _parse(parser, command.args, command.where)
    role = WorkerConfig.from_args(ns).role
    expected = {"prefill": Role.PREFILL, "decode": Role.DECODE}.get(command.role or "", Role.AGGREGATED)
    assert role is expected, f"{command.where}: runs as {role.value}, the manifest says {expected.value}"
    extra = getattr(ns, "extra_engine_args", None)
    if extra:  # relative to the image's WORKDIR, which holds the repository's engine_configs/
        assert (REPO / extra).is_file(), f"{command.where}: --extra-engine-args {extra} does not exist"
    if command.module == "dynamo.trtllm":
        # its engine options checked against TensorRT-LLM's own argument models (its double here)
        if importlib.util.find_spec("tensorrt_llm") is None:
            request.getfixturevalue("trtllm_double")
        monkeypatch.chdir(REPO)
        engine.from_cli_args(ns, role)
