"""Backends without real weights (the mocker) are not asked for greedy equality with a reference
engine: those cases are deselected, not skipped."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        spec = getattr(getattr(item, "callspec", None), "params", {}).get("spec")
        if item.get_closest_marker("real_weights") and spec is not None and not spec.real_weights:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
