"""Parsing of `python -m dynamo.serve` graphs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamo.serve.graph import GraphError, expand, load_graph

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
