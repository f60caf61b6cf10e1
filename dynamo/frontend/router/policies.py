"""The routing policies that need nothing but the candidates and this frontend's own counts."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from dynamo.llm.protocol import GenerateRequest
from dynamo.runtime.discovery.records import InstanceRecord


class Router(Protocol):
    def select(self, candidates: Sequence[InstanceRecord], request: GenerateRequest,
               inflight: Callable[[str], int]) -> InstanceRecord:
        """One of `candidates` (never empty, sorted by instance id) for `request`; `inflight(id)` is
        the number of requests this frontend has open on that instance."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def select(self, candidates: Sequence[InstanceRecord], request: GenerateRequest,
               inflight: Callable[[str], int]) -> InstanceRecord:
        return candidates[next(self._turn) % len(candidates)]


class Random:
    def select(self, candidates: Sequence[InstanceRecord], request: GenerateRequest,
               inflight: Callable[[str], int]) -> InstanceRecord:
        return random.choice(candidates)


class LeastLoaded:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def select(self, candidates: Sequence[InstanceRecord], request: GenerateRequest,
               inflight: Callable[[str], int]) -> InstanceRecord:
        loads = [inflight(r.instance_id) for r in candidates]
        least = min(loads)
        idle = [r for r, load in zip(candidates, loads) if load == least]
        return idle[next(self._turn) % len(idle)]
