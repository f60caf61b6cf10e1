"""SGLang's Prometheus series on the worker's /metrics, and its load for SubscribeStats.

SGLang writes its metrics in prometheus_client's multiprocess mode: its scheduler (a child process)
writes gauges, the tokenizer manager (in this process) request counters and latency histograms, all
into files under PROMETHEUS_MULTIPROC_DIR. The directory must be set before the first
`import prometheus_client` anywhere in the process, or this process's series stay in memory where
no collector sees them: `python -m dynamo.sglang` sets a fresh private one first thing
(`use_private_multiprocess_dir`), removed at exit. The worker's own dynamo_* series are then
file-backed too; they are still served from the worker's registry, so the collector here keeps only
the `sglang:` families.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from dynamo.llm.protocol import EngineStats

PREFIX = "sglang:"
_STATS_MAX_AGE_S = 0.5  # SubscribeStats and the health loop read load often; the files change per step


def use_private_multiprocess_dir() -> str:
    """Point PROMETHEUS_MULTIPROC_DIR at a fresh directory (unless the caller set one); its path."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        return given
    path = tempfile.mkdtemp(prefix="dynamo-sglang-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    atexit.register(shutil.rmtree, path, True)
    return path


class SGLangMetrics:
    """A collector of SGLang's `sglang:*` series (register it on the registry /metrics serves) and a
    reader of its load gauges."""

    def __init__(self, path: str | None = None) -> None:
        from prometheus_client import multiprocess

        self.path = path or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or ""
        self._files = multiprocess.MultiProcessCollector(None, path=self.path) if self.path else None
        self._gauges: dict[str, float] = {}
        self._read_at = 0.0

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: the series come and go with SGLang's files

    def collect(self) -> Iterator[Any]:
        if self._files is None:
            return
        from prometheus_client import REGISTRY

        # SGLang registers a few series in this process's default registry too (its start-up time,
        # CPU seconds); /metrics serves those from there
        served = getattr(REGISTRY, "_names_to_collectors", {})
        for family in self._files.collect():
            if family.name.startswith(PREFIX) and family.name not in served:
                yield family

    def _gauge_values(self) -> dict[str, float]:
        now = time.monotonic()
        if now - self._read_at >= _STATS_MAX_AGE_S:
            values: dict[str, float] = {}
            for family in self.collect():
                if family.type == "gauge":
                    for sample in family.samples:  # one per scheduler rank: sum them
                        values[sample.name] = values.get(sample.name, 0.0) + sample.value
            self._gauges, self._read_at = values, now
        return self._gauges

    def stats(self, total_blocks: int) -> EngineStats:
        g = self._gauge_values()
        usage = min(1.0, max(0.0, g.get(PREFIX + "token_usage", 0.0)))
        return EngineStats(running_requests=int(g.get(PREFIX + "num_running_reqs", 0)),
                           waiting_requests=int(g.get(PREFIX + "num_queue_reqs", 0)),
                           kv_usage=usage, kv_total_blocks=total_blocks,
                           kv_active_blocks=round(usage * total_blocks))
